"""Ray Serve: the app builder (``app.build_app``), its plain-Python parts (analyzer, security, page)."""
