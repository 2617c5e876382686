"""pipelines package.

Importing it installs :func:`pipelines.logs.drop_import_noise` before any pipeline module imports
``apache_beam``: Beam warns "apitools not found …" on every import (its optional BigQuery clients),
which schedulers would otherwise see on every run, ``--help`` included.
"""

from pipelines.logs import drop_import_noise

drop_import_noise()
