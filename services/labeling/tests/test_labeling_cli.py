"""`lineloop labels ...` and `lineloop datasets ...` as a person runs them, against a running service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import sys
import uuid

from lineloop.bus import Bus
from lineloop.contracts.catalogue import bucket
from lineloop.labeling import queue
from lineloop.storage.objects import ObjectStore
from lineloop.v1 import labeling_pb2 as pb


async def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    # A subprocess, awaited: the service under test runs on this same event loop.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lineloop.cli.main", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


def record_truth(objects: ObjectStore, msg, label: str) -> None:
    """The ground truth the gateway simulator records for a frame: what simulated QA answers from."""
    objects.put_bytes(bucket("sim"), f"truth/{msg.frame_id}.json", json.dumps({
        "frame_id": msg.frame_id, "line_id": msg.line_id, "camera_id": msg.camera_id, "label": label, "drift": False,
    }).encode(), "application/json")


@contextlib.asynccontextmanager
async def labeling_knowing(stack, helpers, cfg, frames):
    """A labeling service that has taken in `frames` (published first): (service, stub, the CLI's env)."""
    publisher = Bus(stack.kafka_bootstrap, source="lineloop/test-gateway")
    await publisher.start()
    try:
        for msg in frames:
            await publisher.publish(msg)
    finally:
        await publisher.stop()
    async with helpers.running_labeling(cfg) as (service, stub):
        await helpers.wait_known(stub, [m.frame_id for m in frames])
        # Wide enough that rich does not wrap the messages asserted on.
        yield service, stub, {**os.environ, **stack.env(), "LINELOOP_LABELING_GRPC": f"127.0.0.1:{service.grpc_port}",
                              "COLUMNS": "200"}


async def test_simulated_qa_labels_and_dataset_commands(stack, helpers, tmp_path):
    line = f"line-{uuid.uuid4().hex[:6]}"
    objects = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    truth = {}
    frames = []
    for i, cls in enumerate(["ok", "ok", "bruise", "rot", "scab", "ok", "rot", "bruise"]):
        msg = helpers.frame_event(line, f"cam-{i % 2}", {"ok": 0.6, "bruise": 0.2, "rot": 0.1, "scab": 0.1})
        record_truth(objects, msg, cls)
        truth[msg.frame_id] = cls
        frames.append(msg)
    # No ground truth for this one; its id draws low, so the operator meets it last.
    frames.append(helpers.frame_event(line, "cam-9", None, frame_id=next(
        f for f in (f"nt-{line}-{k}" for k in range(1000)) if queue.uniform_draw(f) < 0.1)))
    cfg = helpers.service_settings(stack, f"sqlite:///{tmp_path / 'labeling.db'}", cut_min_labels=6)
    async with labeling_knowing(stack, helpers, cfg, frames) as (service, stub, env):

        rc, out, err = await cli(env, "labels", "simulate-qa", "--line", line, "--max", "6", "--seed", "1", "--json")
        assert rc == 0, err
        assert json.loads(out) == {"submitted": 6, "wrong_on_purpose": 0, "no_truth": 0, "refused": 0, "refusals": {}}

        async def versions():
            return (await stub.ListDatasets(pb.ListDatasetsRequest(dataset=line))).versions
        for _ in range(150):
            if await versions():
                break
            await asyncio.sleep(0.2)
        rc, out, err = await cli(env, "datasets", "show", line, "--json")
        assert rc == 0, err
        shown = json.loads(out)
        assert (shown["version"], shown["frames"], shown["created_by"]) == ("v0001", 6, "labeling-policy")
        manifest_classes = {k.split("/")[0] for k in shown["class_split_counts"]}
        assert manifest_classes <= set(truth.values()) and sum(shown["class_counts"].values()) == 6

        rc, out, err = await cli(env, "labels", "simulate-qa", "--line", line, "--error-rate", "1", "--json")
        assert rc == 0, err
        second = json.loads(out)
        assert (second["submitted"], second["wrong_on_purpose"], second["no_truth"]) == (2, 2, 1)

        rc, out, err = await cli(env, "datasets", "cut", "--line", line, "--reason", "after QA", "--json")
        assert rc == 0, err
        assert (json.loads(out)["version"], json.loads(out)["parent_version"]) == ("v0002", "v0001")
        rc, out, err = await cli(env, "datasets", "diff", line, "v0001", "v0002", "--json")
        assert rc == 0, err
        diff = json.loads(out)
        assert len(diff["added"]) == 2 and diff["removed"] == [] and diff["moved_split"] == []
        rc, out, _ = await cli(env, "datasets", "show", line)
        assert rc == 0 and "v0002" in out and "train" in out
        print(out)  # the sample in the closing note

        wrong = diff["added"][0]
        history = await stub.GetFrameLabels(pb.GetFrameLabelsRequest(frame_id=wrong))
        assert history.effective.label_class != truth[wrong] and history.effective.annotator == "sim-qa"
        rc, out, err = await cli(env, "labels", "history", wrong)
        assert rc == 0 and "sim-qa" in out and "human" in out

        exported = tmp_path / "tasks.json"
        rc, out, err = await cli(env, "labels", "export-labelstudio", "--line", line, "-o", str(exported))
        assert rc == 0 and "9 tasks written" in out, err
        rc, out, err = await cli(env, "labels", "import-labelstudio", str(exported), "--json")
        assert rc == 0 and json.loads(out) == {"imported": 0, "skipped": 8}  # every label came back as known

        rc, out, err = await cli(env, "labels", "submit", wrong, "mould", "--annotator", "qa-lead")
        assert rc == 1 and "INVALID_ARGUMENT [UNKNOWN_CLASS]" in err and "unknown class 'mould'" in err
        bad = tmp_path / "bad.json"
        bad.write_text('{"tasks": []}')
        rc, out, err = await cli(env, "labels", "import-labelstudio", str(bad))
        assert rc == 1 and "MALFORMED_LABEL_STUDIO_FILE" in err and "expected a JSON array of tasks" in err
        leased = await stub.NextTasks(pb.NextTasksRequest(annotator="x", line_id=line, max_tasks=5))
        assert list(leased.tasks) == []  # the truthless frame is still leased to sim-qa

    rc, out, err = await cli({**env, "LINELOOP_LABELING_GRPC": "127.0.0.1:1"}, "datasets", "list", "--json")
    assert rc == 3 and "labeling is not reachable at 127.0.0.1:1" in err



async def test_suspected_label_errors_go_to_a_second_reviewer_before_the_cut(stack, helpers, tmp_path):
    """Simulated QA makes wrong labels on purpose; the cut is refused until a second reviewer has seen
    the suspects, and `lineloop datasets show` lists them with their fate."""
    line = f"line-{uuid.uuid4().hex[:6]}"
    objects = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    rng = random.Random(5)
    classes = ["ok", "bruise", "rot", "scab"]
    truth, frames = {}, []
    for i in range(120):
        cls = classes[i % 4]
        # A served model right about 95 % of the time scored the frame at ingest.
        logits = {c: rng.gauss(0, 1) + (3.5 if c == cls else 0.0) for c in classes}
        total = sum(math.exp(v) for v in logits.values())
        msg = helpers.frame_event(line, f"cam-{i % 2}", {c: math.exp(v) / total for c, v in logits.items()})
        record_truth(objects, msg, cls)
        truth[msg.frame_id] = cls
        frames.append(msg)
    cfg = helpers.service_settings(stack, f"sqlite:///{tmp_path / 'labeling.db'}", auto_accept_threshold=1.1)
    async with labeling_knowing(stack, helpers, cfg, frames) as (service, stub, env):
        rc, out, err = await cli(env, "labels", "simulate-qa", "--line", line, "--error-rate", "0.05", "--seed", "2",
                                 "--batch", "40", "--json")
        assert rc == 0, err
        assert json.loads(out)["submitted"] == 120 and json.loads(out)["wrong_on_purpose"] > 0
        wrong = {}
        for frame_id in truth:
            effective = (await stub.GetFrameLabels(pb.GetFrameLabelsRequest(frame_id=frame_id))).effective
            if effective.label_class != truth[frame_id]:
                wrong[frame_id] = effective.label_class

        reviews = 0
        for _ in range(4):  # a second look at the corrected labels may flag a few more
            rc, out, err = await cli(env, "datasets", "cut", "--line", line, "--json")
            if rc == 0:
                break
            assert "FAILED_PRECONDITION [LABELS_IN_REVIEW]" in err and "second reviewer" in err, err
            # The only frames in the queue now are the suspects; sim-qa, their author, is not offered them.
            offered = await stub.NextTasks(pb.NextTasksRequest(annotator="sim-qa", line_id=line, max_tasks=50))
            assert list(offered.tasks) == []
            rc, out, err = await cli(env, "labels", "simulate-qa", "--line", line, "--annotator", "qa-lead", "--json")
            assert rc == 0, err
            reviews += json.loads(out)["submitted"]
        assert rc == 0, err
        rc, out, err = await cli(env, "datasets", "show", line, "--json")
        assert rc == 0, err
        check = json.loads(out)["label_check"]
        assert check["checked"] and check["frames_checked"] == 120 and len(check["suspects"]) == reviews > 0
        for x in check["suspects"]:
            assert (x["annotator"], x["reviewed_by"], x["final_label"]) == ("sim-qa", "qa-lead", truth[x["frame_id"]])
            assert x["fate"] == ("corrected" if x["frame_id"] in wrong else "confirmed")
        caught = {x["frame_id"] for x in check["suspects"]} & set(wrong)
        assert len(caught) >= 0.6 * len(wrong), (len(caught), len(wrong))
        rc, out, _ = await cli(env, "datasets", "show", line)
        assert rc == 0 and "suspected label errors" in out and "qa-lead" in out
        print(out)  # the sample in the closing note
