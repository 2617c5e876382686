import pytest


@pytest.mark.integration
def test_moto_server_speaks_s3_kinesis_and_dynamodb_over_http(aws):
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="lake", CreateBucketConfiguration={"LocationConstraint": aws.region})
    s3.put_object(Bucket="lake", Key="k", Body=b"v")
    assert s3.get_object(Bucket="lake", Key="k")["Body"].read() == b"v"
    kinesis = aws.client("kinesis")
    kinesis.create_stream(StreamName="events", ShardCount=2)
    assert len(kinesis.list_shards(StreamName="events")["Shards"]) == 2
    ddb = aws.client("dynamodb")
    ddb.create_table(
        TableName="t",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    assert ddb.describe_table(TableName="t")["Table"]["TableName"] == "t"
