"""Ray Serve: the app builder and deployments (``app.build_app``), the settings the CLI parses without Ray
(``settings.ServeArgs``), the HTTP shapes (``http``) and the plain-Python parts (analyzer, security, page)."""
