"""The monitoring stack: the alarms an on-call engineer needs first.

- Kinesis consumer lag (``GetRecords.IteratorAgeMilliseconds``, maximum over one minute, 5 of 5 periods);
- dead letters: the custom metric ``Livora/Pipelines`` ``DeadLetterEvents`` (sum over 5 minutes) that the
  streaming job publishes (its role may put metrics in that namespace only);
- collector 5xx answers (API Gateway HTTP API ``5xx``, dimension ``ApiId``; the API comes from the SAM
  deploy of ``infra/collector_lambda.yaml``, so its id is a stack parameter);
- DynamoDB throttling per table (read + write throttle events).
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_kinesis as kinesis
from constructs import Construct

from infra.cdk.compute import METRICS_NAMESPACE
from infra.cdk.config import EnvConfig

__all__ = ["DEAD_LETTER_METRIC", "MonitoringStack"]

DEAD_LETTER_METRIC = "DeadLetterEvents"


class MonitoringStack(cdk.Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        stream: kinesis.IStream,
        table_names: list[str],
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        missing = cloudwatch.TreatMissingData.NOT_BREACHING
        gte = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
        self.alarms: dict[str, cloudwatch.Alarm] = {}

        self.alarms["iterator_age"] = cloudwatch.Alarm(
            self,
            "IteratorAge",
            alarm_name=f"livora-{config.name}-kinesis-iterator-age",
            alarm_description="The streaming job is falling behind the stream",
            metric=stream.metric_get_records_iterator_age_milliseconds(
                statistic="Maximum", period=cdk.Duration.minutes(1)
            ),
            threshold=config.iterator_age_alarm_ms,
            evaluation_periods=5,
            comparison_operator=gte,
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,  # no data = the consumer stopped reading
        )

        self.alarms["dead_letters"] = cloudwatch.Alarm(
            self,
            "DeadLetters",
            alarm_name=f"livora-{config.name}-dead-letters",
            alarm_description="Events are going to the dead-letter sink",
            metric=cloudwatch.Metric(
                namespace=METRICS_NAMESPACE,
                metric_name=DEAD_LETTER_METRIC,
                dimensions_map={"Environment": config.name},
                statistic="Sum",
                period=cdk.Duration.minutes(5),
            ),
            threshold=config.dead_letter_alarm_per_5min,
            evaluation_periods=1,
            comparison_operator=gte,
            treat_missing_data=missing,
        )

        api_id = cdk.CfnParameter(
            self,
            "CollectorApiId",
            type="String",
            default="none",
            description="Id of the collector's HTTP API (output of the SAM deploy of infra/collector_lambda.yaml)",
        )
        self.alarms["collector_5xx"] = cloudwatch.Alarm(
            self,
            "Collector5xx",
            alarm_name=f"livora-{config.name}-collector-5xx",
            alarm_description="The collector answers 5xx: clients retry, events may be lost",
            metric=cloudwatch.Metric(
                namespace="AWS/ApiGateway",
                metric_name="5xx",
                dimensions_map={"ApiId": api_id.value_as_string},
                statistic="Sum",
                period=cdk.Duration.minutes(5),
            ),
            threshold=5,
            evaluation_periods=1,
            comparison_operator=gte,
            treat_missing_data=missing,
        )

        for name in table_names:
            throttles = cloudwatch.MathExpression(
                expression="r + w",
                using_metrics={
                    "r": self._dynamodb(name, "ReadThrottleEvents"),
                    "w": self._dynamodb(name, "WriteThrottleEvents"),
                },
                label=f"{name} throttle events",
                period=cdk.Duration.minutes(5),
            )
            self.alarms[f"throttles:{name}"] = cloudwatch.Alarm(
                self,
                f"Throttles-{name}",
                alarm_name=f"livora-{config.name}-dynamodb-throttles-{name}",
                alarm_description=f"DynamoDB throttles requests on {name}",
                metric=throttles,
                threshold=1,
                evaluation_periods=1,
                comparison_operator=gte,
                treat_missing_data=missing,
            )

    @staticmethod
    def _dynamodb(table: str, metric: str) -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace="AWS/DynamoDB",
            metric_name=metric,
            dimensions_map={"TableName": table},
            statistic="Sum",
            period=cdk.Duration.minutes(5),
        )
