"""Tandem from Python, through the stubs the README's "Clients in other languages" generates.

    PYTHONPATH=py python3 dev/interop/python_client.py localhost:50051 [localhost:50052]

Against a running Assignment service: creates a layer and a targeted experiment, starts it,
resolves a unit and applies the token; then sends an invalid CreateExperiment and decodes the
`grpc-status-details-bin` trailer as google.rpc.Status with a google.rpc.BadRequest. Given a
FeatureStore address too, defines a pushed view, writes a row and reads it back. Prints what it
got, one line each; exits non-zero when anything is not as the contract says.
dev/test/python-client.test.ts runs it.
"""

import sys
import uuid

import grpc
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from tandem.assignment.v1 import assignment_service_pb2 as a
from tandem.assignment.v1 import assignment_service_pb2_grpc as a_grpc
from tandem.assignment.v1 import experiment_pb2, layer_pb2
from tandem.common.v1 import common_pb2
from tandem.featurestore.v1 import entity_pb2, feature_view_pb2, value_pb2
from tandem.featurestore.v1 import featurestore_service_pb2 as fs
from tandem.featurestore.v1 import featurestore_service_pb2_grpc as fs_grpc


def struct(value):
    s = struct_pb2.Struct()
    s.update(value)
    return s


def assignment(channel):
    stub = a_grpc.AssignmentServiceStub(channel)
    suffix = uuid.uuid4().hex[:8]
    layer_id, experiment_id = f"py-layer-{suffix}", f"py-experiment-{suffix}"

    stub.CreateLayer(a.CreateLayerRequest(layer=layer_pb2.Layer(id=layer_id)), timeout=10)
    created = stub.CreateExperiment(
        a.CreateExperimentRequest(
            experiment=experiment_pb2.Experiment(
                id=experiment_id,
                unit_type="user",
                surfaces=["py-checkout"],
                layer_id=layer_id,
                layer_range=layer_pb2.LayerRange(start=0, end=1),
                condition=struct({"country": {"$in": ["SE", "NO"]}}),
                variants=[
                    experiment_pb2.Variant(key="control", weight=0.5),
                    experiment_pb2.Variant(
                        key="treatment", weight=0.5, payload=struct({"button": "buy-now"})
                    ),
                ],
            )
        ),
        timeout=10,
    )
    assert created.experiment.status == experiment_pb2.EXPERIMENT_STATUS_DRAFT, created
    started = stub.StartExperiment(a.StartExperimentRequest(id=experiment_id), timeout=10)
    print("started", experiment_pb2.ExperimentStatus.Name(started.experiment.status))

    resolved = stub.Resolve(
        a.ResolveRequest(
            unit=common_pb2.UnitRef(id="user-7", type="user"),
            attributes=struct({"country": "SE"}),
            surfaces=["py-checkout"],
        ),
        timeout=10,
    )
    [assigned] = [x for x in resolved.assignments if x.experiment_id == experiment_id]
    assert assigned.in_experiment and assigned.variant_key in ("control", "treatment"), resolved
    assert resolved.resolve_token, resolved
    print("variant", assigned.variant_key, "payload", assigned.payload_json or "{}")

    applied = stub.Apply(a.ApplyRequest(resolve_token=resolved.resolve_token), timeout=10)
    print("applied logged", applied.exposures.logged_count)

    # Weights summing to 0.9 and an empty variant key: INVALID_ARGUMENT, every violation at once.
    bad = experiment_pb2.Experiment(
        id=f"py-bad-{suffix}",
        unit_type="user",
        surfaces=["py-checkout"],
        variants=[
            experiment_pb2.Variant(key="control", weight=0.6),
            experiment_pb2.Variant(key="", weight=0.3),
        ],
    )
    try:
        stub.CreateExperiment(a.CreateExperimentRequest(experiment=bad), timeout=10)
        raise AssertionError("an invalid experiment was created")
    except grpc.RpcError as error:
        print("error", error.code().name)
        details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
        assert details, "no grpc-status-details-bin trailer"
        status = status_pb2.Status.FromString(details)
        assert status.code == error.code().value[0], status
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                request = error_details_pb2.BadRequest()
                detail.Unpack(request)
                for v in request.field_violations:
                    print("violation", v.field, v.reason or "-", v.description)


def featurestore(channel):
    stub = fs_grpc.FeatureStoreServiceStub(channel)
    suffix = uuid.uuid4().hex[:8]
    entity, view = f"py_user_{suffix}", f"py_profile_{suffix}"
    string = value_pb2.VALUE_TYPE_STRING
    stub.ApplyEntity(
        fs.ApplyEntityRequest(
            entity=entity_pb2.Entity(name=entity, join_key="user_id", value_type=string)
        ),
        timeout=10,
    )
    stub.ApplyFeatureView(
        fs.ApplyFeatureViewRequest(
            feature_view=feature_view_pb2.FeatureView(
                name=view,
                entities=[entity],
                ttl=duration_pb2.Duration(seconds=3600),
                push_source=feature_view_pb2.PushSource(),
                features=[feature_view_pb2.Feature(name="genre", value_type=string)],
            )
        ),
        timeout=10,
    )
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    written = stub.WriteFeatures(
        fs.WriteFeaturesRequest(
            feature_view=view,
            rows=[
                fs.FeatureRow(
                    entity_key={"user_id": value_pb2.FeatureValue(string_value="user-7")},
                    values={"genre": value_pb2.FeatureValue(string_value="jazz")},
                    event_time=now,
                )
            ],
        ),
        timeout=10,
    )
    print("written", written.rows_written)
    users = [value_pb2.FeatureValue(string_value=u) for u in ("user-7", "user-8")]
    read = stub.GetOnlineFeatures(
        fs.GetOnlineFeaturesRequest(
            features=[f"{view}:genre"],
            entity_rows={"user_id": value_pb2.RepeatedValue(values=users)},
        ),
        timeout=10,
    )
    [column] = read.columns
    statuses = [fs.FeatureStatus.Name(s) for s in column.statuses]
    print("features", column.values[0].string_value, *statuses)


def main(argv):
    if len(argv) not in (2, 3):
        sys.exit(f"usage: {argv[0]} ASSIGNMENT_ADDRESS [FEATURESTORE_ADDRESS]")
    with grpc.insecure_channel(argv[1]) as channel:
        assignment(channel)
    if len(argv) == 3:
        with grpc.insecure_channel(argv[2]) as channel:
            featurestore(channel)


if __name__ == "__main__":
    main(sys.argv)
