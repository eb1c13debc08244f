"""The synchronous inspection API, the operator dashboard (``lineguard serve``) and ``lineguard tail``."""
