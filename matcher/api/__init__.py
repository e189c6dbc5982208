"""The shoppers HTTP API (`matcher serve`): FastAPI over matcher.service."""
