"""imagegate: a streaming aiohttp gateway that speaks the OpenAI Images API to clients and any image provider behind it."""

__version__ = "0.1.0"
