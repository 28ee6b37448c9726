"""UserToken: connect (OAuth), refresh, validate, upload the user's SSH key, clean up; and the connect page."""
