"""Config sources that feed the dispatcher from outside the API."""
