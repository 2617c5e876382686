"""infra package.

Its commands (``python -m infra.runners``, ``python -m infra.app`` …) import ``apache_beam`` like the
pipelines do, so the same import-time noise filter is installed first (see :mod:`pipelines.logs`).
"""

from pipelines.logs import drop_import_noise

drop_import_noise()
