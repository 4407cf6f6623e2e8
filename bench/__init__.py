"""The PZLS benchmark (``make bench``): each section measures one capability and prints a table."""
