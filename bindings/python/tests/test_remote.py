"""The Python binding with URLs, against the servers the test command starts on 127.0.0.1
(scripts/servers: nginx for HTTP ranges, s3s-fs for S3 with SigV4 checked): numpy and
torch round trips through S3, loads over HTTP, configuration from storage options, from the
environment (``AWS_ENDPOINT_URL`` and keys) and from an ``~/.aws`` profile, errors, and a
load in a child forked after its parent loaded. Where the servers are not running these
tests skip, unless PLAID_TEST_REQUIRE_SERVERS is set (the test command sets it)."""

import os
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

import plaid
import plaid.numpy as pn


def server_env(*names):
    values = [os.environ.get(n) for n in names]
    if all(values):
        return values
    if os.environ.get("PLAID_TEST_REQUIRE_SERVERS"):
        pytest.fail(f"{', '.join(names)} not set: the test servers are not running")
    pytest.skip("the test servers are not running (scripts/servers starts them)")


@pytest.fixture
def s3():
    endpoint, key, secret, region, bucket = server_env(
        "PLAID_TEST_S3_ENDPOINT", "PLAID_TEST_S3_ACCESS_KEY", "PLAID_TEST_S3_SECRET_KEY",
        "PLAID_TEST_S3_REGION", "PLAID_TEST_S3_BUCKET")
    options = {"aws_endpoint": endpoint, "aws_access_key_id": key,
               "aws_secret_access_key": secret, "aws_region": region, "max_retries": 2}
    prefix = f"s3://{bucket}/py-{uuid.uuid4().hex}"
    return {"options": options, "prefix": prefix, "endpoint": endpoint, "key": key,
            "secret": secret, "region": region}


@pytest.fixture
def http():
    url, root = server_env("PLAID_TEST_HTTP_URL", "PLAID_TEST_HTTP_ROOT")
    folder = f"py-{uuid.uuid4().hex}"
    os.makedirs(os.path.join(root, folder))
    return {"url": f"{url}/{folder}", "root": os.path.join(root, folder)}


def sample():
    rng = np.random.default_rng(7)
    return {
        "embed": rng.standard_normal((512, 300)).astype(np.float32),
        "bias": rng.standard_normal(300).astype(np.float16),
        "step": np.array(3, dtype=np.int64),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_numpy_round_trip_through_s3(s3):
    tensors = sample()
    url = f"{s3['prefix']}/m.plaid"
    pn.save_file(tensors, url, {"kind": "remote"}, storage_options=s3["options"])
    loaded = pn.load_file(url, storage_options=s3["options"])
    assert set(loaded) == set(tensors)
    assert all(same(loaded[k], tensors[k]) for k in tensors)
    with plaid.safe_open(url, storage_options=s3["options"]) as f:
        assert f.metadata() == {"kind": "remote"}
        assert same(f.get_tensor("bias"), tensors["bias"])


def test_missing_object_and_wrong_key(s3):
    with pytest.raises(plaid.NotFoundError) as e:
        pn.load_file(f"{s3['prefix']}/absent.plaid", storage_options=s3["options"])
    assert "absent.plaid" in str(e.value)
    url = f"{s3['prefix']}/m.plaid"
    pn.save_file(sample(), url, storage_options=s3["options"])
    wrong = dict(s3["options"], aws_secret_access_key="wrong")
    with pytest.raises(plaid.PlaidIOError) as e:
        pn.load_file(url, storage_options=wrong)
    assert "HTTP 403" in str(e.value) and url in str(e.value)
    with pytest.raises(plaid.InvalidArgumentError):
        pn.load_file(url, storage_options={"no_such_option": "1"})


def test_http_loads_numpy_and_safetensors(http):
    safetensors = pytest.importorskip("safetensors.numpy")
    tensors = sample()
    safetensors.save_file(tensors, os.path.join(http["root"], "m.safetensors"))
    loaded = pn.load_file(f"{http['url']}/m.safetensors")
    assert all(same(loaded[k], tensors[k]) for k in tensors)


def run_python(code, env=None, timeout=120):
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full,
                          capture_output=True, text=True, timeout=timeout)


def test_configuration_from_the_environment_and_a_profile(s3, tmp_path):
    url = f"{s3['prefix']}/env.plaid"
    pn.save_file(sample(), url, storage_options=s3["options"])
    code = f"""
        import plaid.numpy as pn
        t = pn.load_file({url!r})
        assert t["embed"].shape == (512, 300), t["embed"].shape
        print("ok")
    """
    clean = {k: "" for k in os.environ if k.startswith("AWS_")}
    # Keys, region and an http:// endpoint in the environment, used as given.
    env = dict(clean, AWS_ENDPOINT_URL=s3["endpoint"], AWS_ACCESS_KEY_ID=s3["key"],
               AWS_SECRET_ACCESS_KEY=s3["secret"], AWS_DEFAULT_REGION=s3["region"])
    done = run_python(code, env)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
    # An ~/.aws profile: keys in the credentials file, endpoint and region in the config.
    (tmp_path / "credentials").write_text(
        f"[plaidtest]\naws_access_key_id = {s3['key']}\n"
        f"aws_secret_access_key = {s3['secret']}\n")
    (tmp_path / "config").write_text(
        f"[profile plaidtest]\nregion = {s3['region']}\nendpoint_url = {s3['endpoint']}\n")
    env = dict(clean, AWS_PROFILE="plaidtest",
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"),
               AWS_CONFIG_FILE=str(tmp_path / "config"))
    done = run_python(code, env)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
    # A credential_process (how SSO is reached), and a profile that does not exist.
    (tmp_path / "config").write_text(
        f"[profile plaidtest]\nregion = {s3['region']}\nendpoint_url = {s3['endpoint']}\n"
        f"credential_process = printf '{{\"Version\": 1, \"AccessKeyId\": \"{s3['key']}\", "
        f"\"SecretAccessKey\": \"{s3['secret']}\"}}'\n")
    (tmp_path / "credentials").write_text("")
    done = run_python(code, env)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
    done = run_python(code, dict(env, AWS_PROFILE="nobody"))
    assert done.returncode != 0 and "nobody" in done.stderr, done.stderr


def test_a_child_forked_after_its_parent_loaded_loads_too(s3):
    url = f"{s3['prefix']}/fork.plaid"
    pn.save_file(sample(), url, storage_options=s3["options"])
    # Its own process: forking the multithreaded test runner itself would prove nothing.
    code = f"""
        import os, sys
        import plaid, plaid.numpy as pn
        from plaid import _core
        options = {s3['options']!r}
        parent = pn.load_file({url!r}, storage_options=options)
        reader = _core.Reader({url!r}, storage_options=options)
        reader.load_host()
        pid = os.fork()
        if pid == 0:
            try:
                child = pn.load_file({url!r}, storage_options=options)
                ok = all(child[k].tobytes() == parent[k].tobytes() for k in parent)
                # The reader opened before the fork works in the child too.
                reader.load_host()
                os._exit(0 if ok else 3)
            except BaseException as e:
                print("child:", e, file=sys.stderr)
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        reader.load_host()
        print("child status", os.waitstatus_to_exitcode(status))
        sys.exit(os.waitstatus_to_exitcode(status))
    """
    done = run_python(code, timeout=120)
    assert done.returncode == 0, (done.stdout, done.stderr)


def test_torch_load_file_and_tensor_deserializer_from_urls(s3, http):
    torch = pytest.importorskip("torch")
    import plaid.torch as pt
    tensors = {"w": torch.randn(64, 33), "b": torch.arange(10, dtype=torch.int32)}
    url = f"{s3['prefix']}/t.plaid"
    pt.save_file(tensors, url, storage_options=s3["options"])
    loaded = pt.load_file(url, storage_options=s3["options"])
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with pt.TensorDeserializer(url, device="cpu", storage_options=s3["options"]) as d:
        assert torch.equal(d["w"], tensors["w"])
    # Over HTTP, a file written locally.
    pt.save_file(tensors, os.path.join(http["root"], "t.plaid"))
    loaded = pt.load_file(f"{http['url']}/t.plaid")
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
