"""Catalog products -> labels (keyword rules, never skus) and typed prompts -> labels."""

from __future__ import annotations

import json

import pytest

from matcher.segmentation.labels import (LABEL_MAP_FILE, PROMPTS_FILE, UnknownPromptError, known_labels,
                                         label_for_product, normalise, resolve_prompt)


@pytest.mark.parametrize("title, tags, label", [
    ("Armchair", ["Blend Swap", "Seat"], "armchair"),
    ("Winchester armchair", [], "armchair"),
    ("Armchair ottoman", ["Seat"], "armchair"),
    ("Chair with cushion", ["Seat"], "chair"),
    ("Bar stool", ["Chair", "Seat"], "chair"),
    ("Corner sofa", ["Couch", "Seat"], "sofa"),
    ("Futon couch", ["Sofa"], "sofa"),
    ("Coffee table", [], "table"),
    ("Desk", ["Table"], "table"),
    ("Bedside table", ["Nightstand"], "cabinet"),  # a night stand, not a table
    ("TV stand", ["Cabinet"], "cabinet"),
    ("Bunk bed", ["Kid"], "bed"),
    ("Desk lamp", [], "lamp"),  # a lamp, not a desk
    ("Pedestal vase lamp", [], "lamp"),
    ("Wardrobe", ["Closet"], "cabinet"),
    ("Full bookcase", ["Bookshelf"], "shelf"),
    ("Spathiphyllum", ["Patio", "Plant"], "plant"),  # only the tags say it
    ("Tulips", ["Flowers", "Vase"], "plant"),
    ("Sink cabinet", ["Cupboard"], "sink"),
    ("Toilets unit", [], "toilet"),
    ("Toilet brush", [], None),  # an accessory named after the fixture
    ("Bath", [], "bathtub"),
    ("Shower stall", ["Cabin"], "shower"),
    ("Large fridge", ["Appliance", "Freezer"], "appliance"),
    ("Radiator", ["Heating", "Towel"], "radiator"),
    ("Towel rack", [], None),
    ("TV", ["Appliance", "Television"], "tv"),
    ("Clock", ["Appliance", "Decoration"], None),  # the tag alone does not make a clock an appliance
    ("Suitcase", ["Luggage"], None),
    ("Mid-century sofa", [], "sofa"),  # punctuation is a word break
])
def test_label_for_product(title, tags, label):
    assert label_for_product(title, tags) == label


def test_tags_may_be_a_comma_separated_string():
    assert label_for_product("Yucca", "Patio, Plant") == "plant"


def test_rules_only_use_declared_labels_and_every_label_has_prompts():
    data = json.loads(LABEL_MAP_FILE.read_text())
    prompts = json.loads(PROMPTS_FILE.read_text())["labels"]
    assert {r["label"] for r in data["rules"]} - {None} <= set(data["labels"])
    assert set(prompts) == set(known_labels())


def test_no_phrase_names_two_labels():
    prompts = json.loads(PROMPTS_FILE.read_text())["labels"]
    seen: dict[str, str] = {}
    for label, phrases in prompts.items():
        for phrase in phrases:
            assert seen.setdefault(normalise(phrase), label) == label, f"{phrase!r} is under {seen[phrase]} and {label}"


@pytest.mark.parametrize("text, label", [
    ("segment the armchair", "armchair"),
    ("arm chair", "armchair"),
    ("the couch", "sofa"),
    ("Select all the chairs", "chair"),
    ("mask of the bedside table", "cabinet"),  # the longest phrase wins over "table"
    ("desk lamp", "lamp"),
    ("find the washing machine", "appliance"),
    ("TVs", "tv"),
    ("potted plants please", "plant"),
])
def test_resolve_prompt(text, label):
    assert resolve_prompt(text) == label


def test_unknown_prompt_lists_labels_and_phrases():
    with pytest.raises(UnknownPromptError) as info:
        resolve_prompt("segment the spaceship")
    message = str(info.value)
    assert "spaceship" in message
    for label in known_labels():
        assert label in message
    assert "couch" in message and "arm chair" in message


def test_prompt_for_a_label_the_model_lacks_is_an_error_not_a_near_miss():
    with pytest.raises(UnknownPromptError, match="does not know"):
        resolve_prompt("the bedside table", labels=["table", "chair"])
    assert resolve_prompt("a table", labels=["table", "chair"]) == "table"


def test_empty_prompt_is_unknown():
    with pytest.raises(UnknownPromptError):
        resolve_prompt("segment the")
