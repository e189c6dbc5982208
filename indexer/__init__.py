"""Catalog jobs built on the ``matcher`` library: reading catalogs and indexing them."""
