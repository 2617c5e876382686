"""Contracts: the event envelope, the lake row, the failed-event record and tracking plans.

Everything downstream (transforms, connectors, pipelines) imports its shapes from here;
the Arrow, Avro and JSON Schema forms are generated from the pydantic models by
:mod:`schemas.codegen`, never kept by hand.
"""

SCHEMA_VERSION = "1.0.0"
PIPELINE_VERSION = "0.1.0"
