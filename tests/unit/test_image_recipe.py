"""The operator's image has one source for what goes in (deploy/image/operator.toml): the Dockerfile and the
daemonless build (tools/devcluster/images.py) must say the same thing. And the OCI packing of that build:
digests and sizes in the index, manifest and config match the blobs, layers are deterministic, overlay whiteouts
become OCI whiteouts."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shlex
import stat
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import images

RECIPE = images.load_recipe("operator")
PYPROJECT = images.REPO_ROOT / "pyproject.toml"


# --------------------------------------------------------------------------------------------------------------
# Reading the Dockerfile on its own terms (not through the renderer)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]

    def runs(self) -> list[list[str]]:
        """Each RUN's shell commands (split at &&)."""
        return [[c.strip() for c in args.split(" && ")] for op, args in self.instructions if op == "RUN"]

    def last(self, op: str) -> str:
        return [args for o, args in self.instructions if o == op][-1]


def parse_dockerfile(text: str) -> list[Stage]:
    logical: list[str] = []
    buffer = ""
    for line in text.splitlines():
        if not buffer and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            buffer += line[:-1].rstrip() + " "
            continue
        logical.append((buffer + line.strip()).strip())
        buffer = ""
    stages: list[Stage] = []
    for entry in logical:
        op, _, args = entry.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = args.split()
            stages.append(Stage(words[0], words[2] if len(words) == 3 and words[1].upper() == "AS" else None, []))
        else:
            stages[-1].instructions.append((op, " ".join(args.split())))
    return stages


STAGES = parse_dockerfile(images.DOCKERFILE.read_text())
BY_NAME = {s.name: s for s in STAGES if s.name}
FINAL = STAGES[-1]


def apt_installed(stage: Stage) -> list[str]:
    for commands in stage.runs():
        for command in commands:
            words = shlex.split(command)
            if words[:2] == ["apt-get", "install"]:
                return sorted(w for w in words[2:] if not w.startswith("-"))
    raise AssertionError(f"no apt-get install in stage {stage.name}")


def env_pairs(args: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in shlex.split(args))


# --------------------------------------------------------------------------------------------------------------
# One source: the Dockerfile and the recipe agree


def test_the_dockerfile_is_the_one_generated_from_the_recipe() -> None:
    assert images.DOCKERFILE.read_text() == images.render_dockerfile(RECIPE), (
        "Dockerfile and deploy/image/operator.toml differ: run `python -m devcluster.images dockerfile --write`"
    )


def test_the_dockerfile_installs_the_recipes_debian_packages_on_the_recipes_base() -> None:
    base = BY_NAME["base"]
    assert base.base == RECIPE.docker_image == f"debian:{RECIPE.suite}-slim"
    assert apt_installed(base) == sorted(RECIPE.packages)
    assert apt_installed(BY_NAME["build"]) == sorted(RECIPE.build_packages)
    assert BY_NAME["build"].base == "base" and FINAL.base == "base"
    assert any("apt-get upgrade -y" in commands for commands in base.runs()), "security updates"


def test_the_dockerfile_creates_the_recipes_user_and_runs_as_it() -> None:
    user = RECIPE.user
    assert user is not None
    useradd = next(shlex.split(c) for cmds in BY_NAME["base"].runs() for c in cmds if c.startswith("useradd"))
    assert useradd[useradd.index("--uid") + 1] == str(user.uid)
    assert useradd[useradd.index("--gid") + 1] == str(user.gid)
    assert useradd[-1] == user.name
    assert FINAL.last("USER") == f"{user.uid}:{user.gid}" == RECIPE.config["user"]
    assert user.uid != 0 and user.gid != 0


def test_the_dockerfile_pip_installs_the_recipes_extras_from_the_recipes_sources() -> None:
    py = RECIPE.python
    assert py is not None
    build = BY_NAME["build"]
    pip_install = next(shlex.split(c) for cmds in build.runs() for c in cmds if " install " in c and "pip" in c)
    assert pip_install[:2] == [f"{py.venv}/bin/pip", "install"]
    assert pip_install[2] == f".[{','.join(py.extras)}]"
    copied = [args for op, args in build.instructions if op == "COPY"]
    sources = {word.rstrip("/") for args in copied for word in args.split()[:-1]}
    assert sources == set(py.sources)
    assert FINAL.last("COPY") == f"--from=build {py.venv} {py.venv}"


def test_the_dockerfiles_runtime_configuration_is_the_daemonless_images() -> None:
    config = images.container_config(RECIPE)
    assert env_pairs(FINAL.last("ENV")) == dict(e.split("=", 1) for e in config["Env"])
    assert config["User"] == FINAL.last("USER")
    assert json.loads(FINAL.last("ENTRYPOINT")) == config["Entrypoint"] == ["workspace-secrets-operator", "run"]
    assert json.loads(FINAL.last("CMD")) == config["Cmd"]
    assert {f"{p}/tcp" for p in FINAL.last("EXPOSE").split()} == set(config["ExposedPorts"])


def test_the_image_works_with_a_read_only_root_filesystem_as_the_charts_user() -> None:
    env = dict(e.split("=", 1) for e in images.container_config(RECIPE)["Env"])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].split(":")[0] == f"{RECIPE.python.venv}/bin"  # type: ignore[union-attr]
    values = yaml.safe_load((images.REPO_ROOT / "deploy/helm/workspace-secrets-operator/values.yaml").read_text())
    assert f"{values['podSecurityContext']['runAsUser']}:{values['podSecurityContext']['runAsGroup']}" == (
        RECIPE.config["user"]
    )


class RecordingBuilder:
    """Stands in for the daemonless builder: records the steps the operator image is made of."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, Any]] = {}

    def minbase(self, suite: str) -> images.CachedLayer:
        return images.CachedLayer(f"minbase-{suite}", "k", "id-minbase", Path("/nonexistent"), "minbase")

    def step(self, name: str, lowers: Any, commands: Any, **kwargs: Any) -> images.CachedLayer:
        context = kwargs.get("context")
        self.steps[name] = {"lowers": [l.name for l in lowers], "commands": list(commands), **kwargs}
        if name.endswith("-deps") and context:
            self.steps[name]["context_dir"] = ctx = Path(os.environ["WSO_TEST_CTX"]) / name
            ctx.mkdir(parents=True)
            context(ctx)
        return images.CachedLayer(name, "k", f"id-{name}", Path("/nonexistent"), name)


def test_the_daemonless_build_runs_the_dockerfiles_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSO_TEST_CTX", str(tmp_path))
    builder = RecordingBuilder()
    layers = images._image_layers(builder, RECIPE)  # type: ignore[arg-type]
    assert [layer.name for layer in layers] == ["minbase-bookworm", "operator-base", "operator-deps", "operator-app"]
    steps = builder.steps

    def split(commands: list[str]) -> list[str]:
        return [part.strip() for command in commands for part in command.split(" && ")]

    # The same apt, groupadd and useradd commands as the Dockerfile's base and build stages.
    assert split(steps["operator-base"]["commands"]) == BY_NAME["base"].runs()[0]
    assert split(steps["operator-build"]["commands"]) == BY_NAME["build"].runs()[0]
    # The build-only packages are under the virtualenv but not in the image.
    assert "operator-build" in steps["operator-deps"]["lowers"]
    assert "operator-build" not in [layer.name for layer in layers]
    # pip installs what `pip install '.[all]'` installs: the project's requirements with the recipe's extras...
    requirements = (steps["operator-deps"]["context_dir"] / "requirements.txt").read_text().split()
    assert requirements == images.python_requirements(PYPROJECT, RECIPE.python.extras)  # type: ignore[union-attr]
    assert steps["operator-deps"]["keep"] == steps["operator-app"]["keep"] == [RECIPE.python.venv]  # type: ignore
    assert steps["operator-deps"]["commands"][0] == BY_NAME["build"].runs()[1][0]  # python3 -m venv
    # ...then the operator's wheel, checked like the Dockerfile checks it.
    dockerfile_checks = BY_NAME["build"].runs()[-1][1:]
    assert split(steps["operator-app"]["commands"][1:]) == dockerfile_checks
    assert steps["operator-app"]["inputs"] == {"sources": images.source_hash(RECIPE.python.sources)}  # type: ignore


def test_every_providers_dependencies_are_in_the_image() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    installed = set(images.python_requirements(PYPROJECT, RECIPE.python.extras))  # type: ignore[union-attr]
    for extra in ("aws", "postgres", "gcp"):
        assert set(project["optional-dependencies"][extra]) <= installed, extra
    assert set(project["dependencies"]) <= installed
    assert not any(r.startswith(("pytest", "moto", "matplotlib")) for r in installed), "no dev/bench extras"


def test_requirements_expand_self_referencing_extras(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "My_Pkg"\ndependencies = ["a>=1"]\n'
        '[project.optional-dependencies]\nx = ["b"]\ny = ["c[z]>2", "my-pkg[x]"]\nall = ["my.pkg[x,y]"]\n'
    )
    assert images.python_requirements(tmp_path / "pyproject.toml", ["all"]) == ["a>=1", "b", "c[z]>2"]
    with pytest.raises(images.ImageError):
        images.python_requirements(tmp_path / "pyproject.toml", ["nope"])


def test_the_image_references_and_recipes() -> None:
    assert images.IMAGES == {
        "pause": images.PAUSE_IMAGE, "workspace": images.WORKSPACE_IMAGE, "operator": images.OPERATOR_IMAGE,
    }
    for name, ref in images.IMAGES.items():
        recipe = images.load_recipe(name)
        assert recipe.ref == ref == images.reference(name) and ref.startswith("localhost/wso/")
    pause = images.load_recipe("pause")
    assert pause.scratch and pause.config["entrypoint"] == ["/usr/bin/catatonit", "-P"]
    workspace = images.load_recipe("workspace")
    assert {"bash", "git", "openssh-client", "curl", "ca-certificates", "python3", "python3-boto3"} <= set(
        workspace.packages
    )
    assert workspace.user and workspace.config["user"] == f"{workspace.user.uid}:{workspace.user.gid}"


def test_the_source_hash_follows_content_not_bytecode(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "m.py").write_text("x = 1\n")
    (tmp_path / "pyproject.toml").write_text("")
    before = images.source_hash(["pyproject.toml", "pkg"], tmp_path)
    (tmp_path / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"junk")
    assert images.source_hash(["pyproject.toml", "pkg"], tmp_path) == before
    (tmp_path / "pkg" / "m.py").write_text("x = 2\n")
    assert images.source_hash(["pyproject.toml", "pkg"], tmp_path) != before


# --------------------------------------------------------------------------------------------------------------
# OCI packing


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "conf").write_text("setting\n")
    os.chmod(root / "etc" / "conf", 0o640)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "usr" / "bin" / "tool", 0o755)
    os.link(root / "usr" / "bin" / "tool", root / "usr" / "bin" / "tool-alias")
    (root / "usr" / "bin" / "sh").symlink_to("tool")
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    os.mkfifo(root / "etc" / "fifo")
    for d in ("dev", "proc", "sys"):
        (root / d).mkdir()
    (root / "dev" / "leftover").write_text("not in the layer")
    (root / "proc" / "1").mkdir()
    for path in (root / "etc" / "conf", root / "usr" / "bin" / "tool"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    return root


def layer_members(blob: images.Blob) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob.path.read_bytes())), mode="r:") as tar:
        return tar.getmembers()


def test_a_layer_holds_the_tree_in_order_with_numeric_owners(tmp_path: Path) -> None:
    blob = images.pack_layer(make_tree(tmp_path / "tree"), tmp_path / "layer.tar.gz")
    members = {m.name: m for m in layer_members(blob)}
    assert list(members) == [
        "dev", "etc", "etc/conf", "etc/fifo", "proc", "sys", "tmp", "usr", "usr/bin", "usr/bin/sh", "usr/bin/tool",
        "usr/bin/tool-alias",
    ], "sorted, parents first, no contents of dev/proc/sys"
    assert members["etc/conf"].mode == 0o640 and members["etc/conf"].mtime == 1_700_000_000
    assert members["tmp"].mode == 0o1777 and members["tmp"].isdir()
    assert members["usr/bin/sh"].issym() and members["usr/bin/sh"].linkname == "tool"
    assert members["usr/bin/tool-alias"].islnk() and members["usr/bin/tool-alias"].linkname == "usr/bin/tool"
    assert members["etc/fifo"].isfifo()
    assert all(m.uname == "" and m.gname == "" for m in members.values())
    assert {(m.uid, m.gid) for m in members.values()} == {(os.getuid(), os.getgid())}


def test_a_layer_blob_is_deterministic_and_described_by_its_digests(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    first = images.pack_layer(tree, tmp_path / "a.tar.gz")
    second = images.pack_layer(tree, tmp_path / "b.tar.gz")
    data = first.path.read_bytes()
    assert data == second.path.read_bytes()
    assert first.digest == sha256(data) and first.size == len(data)
    assert first.diff_id == sha256(gzip.decompress(data))
    assert data[4:8] == b"\0\0\0\0", "no timestamp in the gzip header"


def test_an_oci_archive_has_matching_digests_and_sizes(tmp_path: Path) -> None:
    blobs = [
        images.pack_layer(make_tree(tmp_path / "one"), tmp_path / "one.tar.gz"),
        images.pack_layer(make_tree(tmp_path / "two"), tmp_path / "two.tar.gz"),
    ]
    config = images.image_config(images.container_config(RECIPE), blobs, ["one", "two"])
    archive = images.write_oci_archive(tmp_path / "image.tar", images.OPERATOR_IMAGE, blobs, config)

    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, content in files.items():
        if name.startswith("blobs/sha256/"):
            assert name == "blobs/" + sha256(content).replace(":", "/"), "a blob is stored under its digest"

    def blob(descriptor: dict[str, Any]) -> bytes:
        content = files["blobs/" + descriptor["digest"].replace(":", "/")]
        assert descriptor["digest"] == sha256(content) and descriptor["size"] == len(content)
        return content

    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2 and index["mediaType"] == images.MEDIA_INDEX
    [entry] = index["manifests"]
    assert entry["mediaType"] == images.MEDIA_MANIFEST
    assert entry["annotations"] == {
        "io.containerd.image.name": "localhost/wso/operator:dev", "org.opencontainers.image.ref.name": "dev",
    }
    assert entry["platform"] == {"architecture": config["architecture"], "os": "linux"}
    manifest = json.loads(blob(entry))
    assert manifest["mediaType"] == images.MEDIA_MANIFEST
    assert manifest["config"]["mediaType"] == images.MEDIA_CONFIG
    written_config = json.loads(blob(manifest["config"]))
    assert written_config == config
    assert [layer["mediaType"] for layer in manifest["layers"]] == [images.MEDIA_LAYER_GZIP] * 2
    layer_data = [blob(layer) for layer in manifest["layers"]]
    assert layer_data == [b.path.read_bytes() for b in blobs]
    assert written_config["rootfs"] == {"type": "layers", "diff_ids": [sha256(gzip.decompress(d)) for d in layer_data]}
    assert written_config["config"]["User"] == "65532:65532"
    assert [h["created_by"] for h in written_config["history"]] == ["one", "two"]

    assert images.read_oci_archive(archive)[1] == manifest
    again = images.write_oci_archive(tmp_path / "again.tar", images.OPERATOR_IMAGE, blobs, config)
    assert again.read_bytes() == archive.read_bytes(), "the archive is deterministic"


def test_a_tampered_blob_is_detected(tmp_path: Path) -> None:
    blob = images.pack_layer(make_tree(tmp_path / "tree"), tmp_path / "layer.tar.gz")
    config = images.image_config({"Env": []}, [blob])
    archive = images.write_oci_archive(tmp_path / "image.tar", "localhost/x:1", [blob], config)
    data = bytearray(archive.read_bytes())
    offset = data.index(blob.path.read_bytes()[:64])
    data[offset + 100] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises((images.ImageError, OSError, EOFError, gzip.BadGzipFile)):
        images.read_oci_archive(archive)


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="overlay whiteouts are device nodes and trusted.* xattrs")


@root_only
def test_overlay_whiteouts_become_oci_whiteouts_and_unpack_applies_them(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    (lower / "d" / "old").write_text("old")
    (lower / "gone").write_text("gone")
    (lower / "kept").write_text("kept")
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    (upper / "d" / "new").write_text("new")
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")
    os.mknod(upper / "gone", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    blobs = [images.pack_layer(lower, tmp_path / "lower.tar.gz"), images.pack_layer(upper, tmp_path / "upper.tar.gz")]
    names = [m.name for m in layer_members(blobs[1])]
    assert names == ["d", "d/.wh..wh..opq", "d/new", ".wh.gone"]
    archive = images.write_oci_archive(
        tmp_path / "image.tar", "localhost/x:1", blobs, images.image_config({"Env": []}, blobs)
    )
    root = tmp_path / "rootfs"
    images.unpack_oci_archive(archive, root)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["d", "d/new", "kept"]


def test_keep_only_cuts_a_tree_down_to_the_kept_paths(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "opt" / "venv" / "bin").mkdir(parents=True)
    (tree / "opt" / "venv" / "bin" / "python").write_text("")
    (tree / "opt" / "other").write_text("")
    (tree / "etc").mkdir()
    (tree / "etc" / "junk").write_text("")
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "catatonit").write_text("")
    (tree / "usr" / "bin" / "other").write_text("")
    images._keep_only(tree, ["/opt/venv", "/usr/bin/catatonit"])
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*")) == [
        "opt", "opt/venv", "opt/venv/bin", "opt/venv/bin/python", "usr", "usr/bin", "usr/bin/catatonit",
    ]
    with pytest.raises(images.ImageError):
        images._keep_only(tree, ["/missing"])
