"""Certificate authorities: the plugin interface (``base``) and Keyturn's internal CA."""
