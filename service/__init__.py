"""roomwarden: closes VideoSDK rooms by rule. Importing the package has no side effects."""


def create_app(*args, **kwargs):
    """See `service.app.create_app`; imported lazily so `import service` stays cheap."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
