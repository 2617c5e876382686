"""Presentation of the analytics tables: number formats, charts and the HTML pages of ``pipelines.report``.

Here rather than in ``transforms/``: transforms hold pure computations on records and tables; turning
finished aggregates into HTML is output, the same kind of work as writing Parquet, and only
``pipelines.report`` uses it. A package beside the pipeline (not ``pipelines/report/``, which would
shadow the ``pipelines.report`` module) keeps the templates next to the code that fills them.
"""

from pipelines.report_page.render import Definitions, page_file_name, render_index, render_tenant_page, tenants_of

__all__ = ["Definitions", "page_file_name", "render_index", "render_tenant_page", "tenants_of"]
