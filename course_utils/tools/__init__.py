"""The top floor, for maintainers: the course map and notebook housekeeping (``course``: badges, the setup
cell, images, stripping), the API-drift check (``api_check``), the gpu rehearsal's stand-in models
(``standins``) and the JupyterLab command (``lab``). They may import every floor below; nothing in
``course_utils`` imports them (``scripts/``, the Makefile and the tests do).
"""
