"""The HTTP API of API.md (aiohttp): thin handlers over the dispatcher."""
