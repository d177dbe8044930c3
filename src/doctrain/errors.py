"""The one exception type users see as a clean one-line message instead of a traceback."""


class UserError(Exception):
    """A problem with the user's input (config, manifest, images, model file) that they must fix."""
