"""A model version written to the stack's S3 repository is loaded by Triton (explicit mode)
and answers gRPC inference exactly as onnxruntime does on the same file."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest

from lineloop.serving import ServingError, ServingOptions, TritonControl, open_repository

from .conftest import CLASSES, EMBEDDING_DIM, INPUT_SIZE, build_classifier


def reference(model_path, images):
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    probabilities, embedding = session.run(["probabilities", "embedding"], {"images": images})
    return probabilities, embedding


def images(count, seed):
    return np.random.default_rng(seed).random((count, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)


@pytest.fixture
def repository(stack):
    return open_repository(stack.triton_repository, stack.s3_access_key, stack.s3_secret_key)


@pytest.fixture
def triton(stack):
    with TritonControl(stack.triton_grpc) as control:
        yield control


def test_load_infer_new_version_unload(tmp_path, repository, triton):
    v1 = build_classifier(tmp_path / "v1.onnx", seed=1)
    v2 = build_classifier(tmp_path / "v2.onnx", seed=2)
    repository.write_model_version("apples_serving", 1, v1, labels=CLASSES)
    assert repository.versions("apples_serving") == [1]

    triton.load("apples_serving")
    triton.wait_ready("apples_serving", 1, timeout=60)
    batch = images(5, seed=10)
    prediction = triton.infer("apples_serving", batch, version=1)
    assert prediction.probabilities.shape == (5, len(CLASSES))
    assert prediction.embedding.shape == (5, EMBEDDING_DIM)
    expected_p, expected_e = reference(v1, batch)
    np.testing.assert_allclose(prediction.probabilities, expected_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prediction.embedding, expected_e, rtol=1e-5, atol=1e-6)
    triton.smoke("apples_serving", 1)

    # A canary: version 2 served beside version 1 once the config names both.
    repository.write_model_version("apples_serving", 2, v2, labels=CLASSES, options=ServingOptions(versions=[1, 2]))
    triton.load("apples_serving")
    triton.wait_ready("apples_serving", 2, timeout=60)
    assert triton.ready_versions("apples_serving") == [1, 2]
    np.testing.assert_allclose(triton.infer("apples_serving", batch, version=2).probabilities,
                               reference(v2, batch)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(triton.infer("apples_serving", batch, version=1).probabilities,
                               expected_p, rtol=1e-5, atol=1e-6)

    triton.unload("apples_serving")
    assert triton.ready_versions("apples_serving") == []
    with pytest.raises(ServingError, match="apples_serving"):
        triton.infer("apples_serving", batch, version=1)


def test_concurrent_requests_each_get_their_own_answer(tmp_path, repository, triton):
    model = build_classifier(tmp_path / "m.onnx", seed=3)
    repository.write_model_version("apples_batched", 1, model,
                                   options=ServingOptions(max_batch_size=8, max_queue_delay_us=20_000))
    triton.load("apples_batched")
    triton.wait_ready("apples_batched", 1)
    requests = [images(1 + i % 3, seed=100 + i) for i in range(12)]
    # Dynamic batching merges these into shared batches; every request must still get
    # exactly its own rows back.
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda batch: triton.infer("apples_batched", batch, version=1), requests))
    for batch, answer in zip(requests, answers):
        expected_p, expected_e = reference(model, batch)
        np.testing.assert_allclose(answer.probabilities, expected_p, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(answer.embedding, expected_e, rtol=1e-5, atol=1e-6)
    triton.unload("apples_batched")


def test_bad_requests_get_specific_errors(tmp_path, repository, triton):
    model = build_classifier(tmp_path / "m.onnx", seed=4)
    repository.write_model_version("apples_strict", 1, model)
    triton.load("apples_strict")
    triton.wait_ready("apples_strict", 1)
    wrong_size = np.zeros((2, 3, INPUT_SIZE + 1, INPUT_SIZE + 1), dtype=np.float32)
    with pytest.raises(ServingError, match="unexpected shape"):
        triton.infer("apples_strict", wrong_size, version=1)
    too_many = images(9, seed=5)  # max_batch_size is 8
    with pytest.raises(ServingError, match="batch-size must be <= 8"):
        triton.infer("apples_strict", too_many, version=1)
    # The model still serves after refusing bad requests.
    assert triton.infer("apples_strict", images(2, seed=6), version=1).probabilities.shape == (2, len(CLASSES))
    with pytest.raises(ServingError, match="could not load 'no_such_model'"):
        triton.load("no_such_model")
    triton.unload("apples_strict")


def test_new_version_replaces_the_old_under_the_default_policy(tmp_path, repository, triton):
    v1 = build_classifier(tmp_path / "v1.onnx", seed=7)
    v2 = build_classifier(tmp_path / "v2.onnx", seed=8)
    repository.write_model_version("apples_promoted", 1, v1)
    triton.load("apples_promoted")
    triton.wait_ready("apples_promoted", 1)
    repository.write_model_version("apples_promoted", 2, v2)
    triton.load("apples_promoted")
    triton.wait_ready("apples_promoted", 2)
    assert triton.ready_versions("apples_promoted") == [2]
    batch = images(3, seed=9)
    np.testing.assert_allclose(triton.infer("apples_promoted", batch).probabilities, reference(v2, batch)[0],
                               rtol=1e-5, atol=1e-6)
    triton.unload("apples_promoted")
