"""The connect page and the OAuth callback (aiohttp), served by the operator on its own port."""
