"""Container images without a registry or a daemon: root filesystems from Debian packages, packed as OCI images.

Three images, each described by a recipe (TOML) that is the one list of what goes in:

* ``operator`` (``deploy/image/operator.toml``): Debian's python3 and a virtualenv with ``pip install '.[all]'`` of
  this repository (every provider's dependencies), non-root 65532:65532, runs with a read-only root filesystem.
  The repository's ``Dockerfile`` is generated from the same recipe (:func:`render_dockerfile`; a unit test fails
  when they differ), so ``docker build`` and this build cannot drift.
* ``workspace`` (``tools/images/workspace.toml``): the developer-workspace image of the local node's pods.
* ``pause`` (``tools/images/pause.toml``): the pod sandbox image (Debian's statically linked catatonit, ``-P``).

How an image is made (root only: debootstrap, overlay mounts and chroot):

1. ``debootstrap --variant=minbase`` of the recipe's suite into the cache, trimmed like Debian's slim images
   (no docs but copyright files, no man pages or locales) with the suite's updates and security sources.
2. Every further layer is a *step*: shell commands run in a chroot of an overlay mount whose lower directories are
   the layers below it; the overlay's upper directory is the layer (its whiteouts become OCI whiteouts). The
   chroot lives in its own mount and PID namespaces (``unshare --kill-child``), so nothing it mounts or starts
   outlives it. The commands are the ones the Dockerfile runs (:func:`apt_commands`, :func:`user_commands`, ...).
3. Each layer is a directory plus a gzip tar blob under ``~/.cache/workspace-secrets-operator/images``, keyed by a
   hash of everything that determines it (the layers below, the commands, the inputs). The operator's virtualenv
   is two layers: the dependencies (keyed by the requirement strings of ``pyproject.toml``) and the operator's
   wheel (keyed by the hash of its sources), so a source change rebuilds only the small top layer.
4. :func:`write_oci_archive` writes an OCI image layout as one tar (``oci-layout``, ``index.json``, blobs) that
   ``ctr -n k8s.io images import`` loads. The packing is deterministic: sorted entries, numeric owners, the files'
   own modification times (pip's ``.pyc`` files are checked against them), gzip without a timestamp.

Only the standard library is used, and nothing of the operator is imported.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath as PurePosix
from typing import Any, BinaryIO, Final

from .records import _atomic_write

REPO_ROOT: Final = Path(__file__).resolve().parents[2]

# The image references: stable names the node's containerd, the chart's values and the tests use. A new build
# imported under the same reference replaces the old one.
PAUSE_IMAGE: Final = "localhost/wso/pause:dev"
WORKSPACE_IMAGE: Final = "localhost/wso/workspace:dev"
OPERATOR_IMAGE: Final = "localhost/wso/operator:dev"
IMAGES: Final[dict[str, str]] = {"pause": PAUSE_IMAGE, "workspace": WORKSPACE_IMAGE, "operator": OPERATOR_IMAGE}



def reference(name: str) -> str:
    """The full reference image ``name`` is imported under (what pod specs and the chart name). ``localhost/`` is
    a registry host to the kubelet and containerd's CRI, so the reference is used as is (no docker.io/library/)."""
    try:
        return IMAGES[name]
    except KeyError:
        raise ImageError(f"unknown image {name!r} (known: {', '.join(IMAGES)})") from None


RECIPES: Final[dict[str, Path]] = {
    "pause": REPO_ROOT / "tools" / "images" / "pause.toml",
    "workspace": REPO_ROOT / "tools" / "images" / "workspace.toml",
    "operator": REPO_ROOT / "deploy" / "image" / "operator.toml",
}
DOCKERFILE: Final = REPO_ROOT / "Dockerfile"

# Bumped when the way layers are made changes, so cached layers of an older builder are not reused.
BUILDER_VERSION: Final = "1"

DEBIAN_MIRROR: Final = os.environ.get("WSO_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_SECURITY_MIRROR: Final = os.environ.get("WSO_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")

# What Debian's slim images leave out (debuerreotype's slimify list), as dpkg path filters.
DPKG_EXCLUDES: Final = (
    "path-exclude /usr/share/doc/*",
    "path-include /usr/share/doc/*/copyright",
    "path-exclude /usr/share/info/*",
    "path-exclude /usr/share/linda/*",
    "path-exclude /usr/share/lintian/overrides/*",
    "path-exclude /usr/share/locale/*",
    "path-exclude /usr/share/man/*",
)

# The build stage's environment (both builds): no pip cache in a layer, no version-check request.
PIP_BUILD_ENV: Final[dict[str, str]] = {"PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

# Run after every apt step (both builds): no package lists, archives or logs in a layer.
APT_CLEANUP: Final = (
    "apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log"
    " /var/log/alternatives.log /var/cache/debconf/*-old /var/lib/dpkg/*-old /var/cache/ldconfig/aux-cache"
)

DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MEDIA_INDEX: Final = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_REF_NAME: Final = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME: Final = "io.containerd.image.name"

# Top-level directories whose contents never go into a layer (the runtime mounts them).
_NO_CONTENTS: Final = ("dev", "proc", "sys")
_OPAQUE_XATTR: Final = "trusted.overlay.opaque"
_WHITEOUT_PREFIX: Final = ".wh."
_OPAQUE_MARKER: Final = ".wh..wh..opq"


class ImageError(RuntimeError):
    """An image could not be built (a missing tool, a failed step, a malformed recipe)."""


# --------------------------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    create_home: bool
    shell: str
    system: bool


@dataclass(frozen=True)
class Python:
    venv: str
    extras: tuple[str, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Recipe:
    name: str
    ref: str
    path: Path
    suite: str
    scratch: bool
    docker_image: str | None
    packages: tuple[str, ...]
    build_packages: tuple[str, ...]
    keep: tuple[str, ...]
    user: User | None
    python: Python | None
    config: dict[str, Any]


def load_recipe(name: str, path: Path | None = None) -> Recipe:
    """Read an image's recipe (``RECIPES[name]`` unless ``path`` is given)."""
    path = path or RECIPES.get(name)
    if path is None:
        raise ImageError(f"unknown image {name!r} (known: {', '.join(IMAGES)})")
    data = tomllib.loads(path.read_text())
    base = data.get("base", {})
    debian = data.get("debian", {})
    user = data.get("user")
    python = data.get("python")
    config = data.get("config", {})
    recipe = Recipe(
        name=name,
        ref=IMAGES.get(name, f"localhost/wso/{name}:dev"),
        path=path,
        suite=base["suite"],
        scratch=bool(base.get("scratch", False)),
        docker_image=base.get("docker_image"),
        packages=tuple(debian.get("packages", ())),
        build_packages=tuple(debian.get("build_packages", ())),
        keep=tuple(debian.get("keep", ())),
        user=User(**user) if user else None,
        python=Python(python["venv"], tuple(python["extras"]), tuple(python["sources"])) if python else None,
        config=config,
    )
    if recipe.scratch and not recipe.keep:
        raise ImageError(f"{path}: a scratch image needs [debian].keep (the paths that go into it)")
    if recipe.python and recipe.scratch:
        raise ImageError(f"{path}: a scratch image cannot have a [python] virtualenv")
    return recipe


def container_config(recipe: Recipe) -> dict[str, Any]:
    """The OCI image configuration's ``config`` object (what the Dockerfile's USER/ENV/ENTRYPOINT/... say)."""
    cfg = recipe.config
    env = dict(cfg.get("env", {}))
    env.setdefault("PATH", DEFAULT_PATH)
    out: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in env.items()]}
    if "user" in cfg:
        out["User"] = cfg["user"]
    if "entrypoint" in cfg:
        out["Entrypoint"] = list(cfg["entrypoint"])
    if "cmd" in cfg:
        out["Cmd"] = list(cfg["cmd"])
    if "workdir" in cfg:
        out["WorkingDir"] = cfg["workdir"]
    if cfg.get("exposed_ports"):
        out["ExposedPorts"] = {f"{p}/tcp": {} for p in cfg["exposed_ports"]}
    return out


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?(.*)$")


def python_requirements(pyproject: Path, extras: Sequence[str]) -> list[str]:
    """The third-party requirements of the project with ``extras`` (self-referencing extras expanded), as pip
    requirement strings, sorted: what ``pip install '.[extras]'`` installs besides the project itself."""
    project = tomllib.loads(pyproject.read_text())["project"]
    me = _normalize(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: set[str] = set()
    seen: set[str] = set()

    def add(requirements: Sequence[str]) -> None:
        for requirement in requirements:
            match = _REQUIREMENT.match(requirement)
            if match and _normalize(match.group(1)) == me:
                expand([e.strip() for e in (match.group(2) or "").split(",") if e.strip()])
            else:
                out.add(requirement.strip())

    def expand(names: Sequence[str]) -> None:
        for extra in names:
            if extra in seen:
                continue
            if extra not in optional:
                raise ImageError(f"{pyproject}: no optional-dependencies extra {extra!r}")
            seen.add(extra)
            add(optional[extra])

    add(project.get("dependencies", []))
    expand(extras)
    return sorted(out)


# --------------------------------------------------------------------------------------------------------------
# The commands both builds run (the Dockerfile's RUN lines and the daemonless build's steps)


def apt_commands(packages: Sequence[str], *, upgrade: bool) -> list[str]:
    commands = ["apt-get update"]
    if upgrade:
        commands.append("apt-get upgrade -y")
    commands.append("apt-get install -y --no-install-recommends " + " ".join(packages))
    commands.append(APT_CLEANUP)
    return commands


def user_commands(user: User) -> list[str]:
    system = ["--system"] if user.system else []
    home = ["--create-home"] if user.create_home else ["--no-create-home"]
    return [
        shlex.join(["groupadd", *system, "--gid", str(user.gid), user.name]),
        shlex.join(
            [
                "useradd", *system, "--uid", str(user.uid), "--gid", str(user.gid), *home,
                "--home-dir", user.home, "--shell", user.shell, "--no-log-init", user.name,
            ]
        ),
    ]


def base_commands(recipe: Recipe) -> list[str]:
    """The image's own layer on top of the Debian base: packages (with security updates) and its user."""
    commands = apt_commands(recipe.packages, upgrade=not recipe.scratch)
    if recipe.user:
        commands += user_commands(recipe.user)
    return commands


def venv_pip(python: Python) -> str:
    return f"{python.venv}/bin/pip"


def venv_checks(recipe: Recipe) -> list[str]:
    """Run after the operator is installed into the virtualenv (both builds)."""
    assert recipe.python
    checks = [f"{venv_pip(recipe.python)} check"]
    entrypoint = recipe.config.get("entrypoint")
    if entrypoint:
        checks.append(shlex.join([f"{recipe.python.venv}/bin/{entrypoint[0]}", "--version"]))
    return checks


def _run_lines(commands: Sequence[str]) -> str:
    return "RUN " + " \\\n && ".join(commands)


def render_dockerfile(recipe: Recipe) -> str:
    """The Dockerfile for ``recipe`` (the operator's): the same packages, commands, user, pip extras, environment
    and entrypoint as the daemonless build, for ``docker build``."""
    if recipe.python is None or recipe.docker_image is None or recipe.user is None:
        raise ImageError(f"{recipe.path}: a Dockerfile needs [base].docker_image, [user] and [python]")
    py = recipe.python
    rel = recipe.path.relative_to(REPO_ROOT)
    files = [s for s in py.sources if not (REPO_ROOT / s).is_dir()]
    dirs = [s for s in py.sources if (REPO_ROOT / s).is_dir()]
    cfg = container_config(recipe)
    env = dict(recipe.config.get("env", {}))
    lines = [
        f"# GENERATED from {rel} by `python -m devcluster.images dockerfile --write`:",
        "# edit the recipe, not this file (tests/unit/test_image_recipe.py fails when they differ). The same recipe",
        "# builds this image without a daemon or a registry: `python -m devcluster.images build operator`.",
        "#   docker build -t workspace-secrets-operator:<version> .",
        "# Dependencies are installed into a virtualenv in a build stage; only the virtualenv is copied into the",
        "# runtime stage (no build packages, caches or sources beyond the installed package).",
        f"FROM {recipe.docker_image} AS base",
        "ARG DEBIAN_FRONTEND=noninteractive",
        _run_lines(base_commands(recipe)),
        "",
        "FROM base AS build",
        "ARG DEBIAN_FRONTEND=noninteractive",
        _run_lines(apt_commands(recipe.build_packages, upgrade=False)),
        "ENV " + " ".join(f"{k}={v}" for k, v in PIP_BUILD_ENV.items()),
        f"RUN python3 -m venv {py.venv}",
        "WORKDIR /src",
    ]
    if files:
        lines.append(f"COPY {' '.join(files)} ./")
    lines += [f"COPY {d} ./{d}" for d in dirs]
    extras = ",".join(py.extras)
    lines += [
        _run_lines([f"{venv_pip(py)} install {shlex.quote(f'.[{extras}]')}", *venv_checks(recipe)]),
        "",
        "FROM base",
        f"COPY --from=build {py.venv} {py.venv}",
        "ENV " + " ".join(f"{k}={v}" for k, v in env.items()),
        f"USER {cfg['User']}",
    ]
    if recipe.config.get("exposed_ports"):
        lines.append("EXPOSE " + " ".join(str(p) for p in recipe.config["exposed_ports"]))
    if "Entrypoint" in cfg:
        lines.append("ENTRYPOINT " + json.dumps(cfg["Entrypoint"]))
    if "Cmd" in cfg:
        lines.append("CMD " + json.dumps(cfg["Cmd"]))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# OCI packing


@dataclass(frozen=True)
class Blob:
    """A layer blob: a gzip tar, its digest and size, and the digest of the uncompressed tar (the diff ID)."""

    path: Path
    digest: str
    size: int
    diff_id: str


class _HashingWriter(io.RawIOBase):
    def __init__(self, target: BinaryIO | None) -> None:
        self._target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.size += len(view)
        if self._target is not None:
            self._target.write(view)
        return len(view)


def _layer_entries(tree: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(archive name, path, lstat) of everything under ``tree``, parents first, names sorted."""

    def walk(directory: Path, prefix: str) -> Iterator[tuple[str, Path, os.stat_result]]:
        for name in sorted(os.listdir(directory)):
            path = directory / name
            st = path.lstat()
            arcname = prefix + name
            yield arcname, path, st
            if stat.S_ISDIR(st.st_mode) and not (prefix == "" and name in _NO_CONTENTS):
                yield from walk(path, arcname + "/")

    yield from walk(tree, "")


def _tarinfo(arcname: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    return info


def write_layer_tar(tree: Path, out: BinaryIO) -> None:
    """Write ``tree`` as an OCI layer tar (uncompressed) to ``out``. Overlay whiteouts (character devices 0/0) and
    opaque directories (``trusted.overlay.opaque``) become OCI whiteouts; hard links stay hard links; the
    contents of dev/, proc/ and sys/ are left out; sockets are skipped."""
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for arcname, path, st in _layer_entries(tree):
            mode = st.st_mode
            if stat.S_ISCHR(mode) and st.st_rdev == 0:
                parent, _, name = arcname.rpartition("/")
                info = _tarinfo((parent + "/" if parent else "") + _WHITEOUT_PREFIX + name, st)
                info.mode = 0o600
                tar.addfile(info)
                continue
            info = _tarinfo(arcname, st)
            if stat.S_ISDIR(mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                if _getxattr(path, _OPAQUE_XATTR) == b"y":
                    marker = _tarinfo(f"{arcname}/{_OPAQUE_MARKER}", st)
                    marker.mode = 0o600
                    tar.addfile(marker)
            elif stat.S_ISLNK(mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    info.type = tarfile.LNKTYPE
                    info.linkname = links[key]
                    tar.addfile(info)
                    continue
                links[key] = arcname
                capability = _getxattr(path, "security.capability")
                if capability is not None:
                    info.pax_headers["SCHILY.xattr.security.capability"] = capability.decode(
                        "utf-8", "surrogateescape"
                    )
                info.size = st.st_size
                with path.open("rb") as f:
                    tar.addfile(info, f)
            elif stat.S_ISFIFO(mode):
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                tar.addfile(info)


def _getxattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def pack_layer(tree: Path, out: Path, *, compresslevel: int = 6) -> Blob:
    """Pack ``tree`` into the gzip tar ``out`` and return its :class:`Blob` (deterministic for a given tree)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as raw:
        compressed = _HashingWriter(raw)
        with gzip.GzipFile(filename="", fileobj=compressed, mode="wb", compresslevel=compresslevel, mtime=0) as gz:
            uncompressed = _HashingWriter(gz)  # type: ignore[arg-type]
            write_layer_tar(tree, uncompressed)  # type: ignore[arg-type]
    tmp.rename(out)
    return Blob(out, "sha256:" + compressed.sha256.hexdigest(), compressed.size,
                "sha256:" + uncompressed.sha256.hexdigest())


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def host_platform() -> dict[str, str]:
    machine = platform.machine()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}
    return {"architecture": arch.get(machine, machine), "os": "linux"}


def image_config(config: dict[str, Any], blobs: Sequence[Blob], history: Sequence[str] = ()) -> dict[str, Any]:
    """The OCI image configuration document for ``config`` (see :func:`container_config`) and ``blobs``."""
    doc: dict[str, Any] = {
        **host_platform(),
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in blobs]},
    }
    if history:
        doc["history"] = [{"created": "1970-01-01T00:00:00Z", "created_by": h} for h in history]
    return doc


def write_oci_archive(out: Path, ref: str, blobs: Sequence[Blob], config: dict[str, Any]) -> Path:
    """Write an OCI image layout holding one image (``config`` from :func:`image_config`, layers ``blobs``) as a
    tar at ``out``, named ``ref`` for ``ctr images import``. Returns ``out``."""
    config_bytes = _canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": _descriptor(MEDIA_CONFIG, config_bytes),
        "layers": [{"mediaType": MEDIA_LAYER_GZIP, "digest": b.digest, "size": b.size} for b in blobs],
    }
    manifest_bytes = _canonical(manifest)
    tag = ref.rpartition(":")[2] if ":" in ref.rpartition("/")[2] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                **_descriptor(MEDIA_MANIFEST, manifest_bytes),
                "platform": {"architecture": config["architecture"], "os": config["os"]},
                "annotations": {ANNOTATION_CONTAINERD_NAME: ref, ANNOTATION_REF_NAME: tag},
            }
        ],
    }
    small = {
        "oci-layout": _canonical({"imageLayoutVersion": "1.0.0"}),
        "index.json": _canonical(index),
        "blobs/" + manifest["config"]["digest"].replace(":", "/"): config_bytes,
        "blobs/" + index["manifests"][0]["digest"].replace(":", "/"): manifest_bytes,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")

    def header(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.mode = 0o755 if directory else 0o644
        info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
        info.size = size
        info.mtime = 0
        return info

    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(header("blobs", directory=True))
        tar.addfile(header("blobs/sha256", directory=True))
        entries: dict[str, bytes | Path] = {**small}
        for b in blobs:
            entries["blobs/" + b.digest.replace(":", "/")] = b.path
        for name in sorted(entries):
            content = entries[name]
            if isinstance(content, bytes):
                tar.addfile(header(name, len(content)), io.BytesIO(content))
            else:
                with content.open("rb") as f:
                    tar.addfile(header(name, content.stat().st_size), f)
    tmp.rename(out)
    return out


def read_oci_archive(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(index, manifest, config) of a single-image OCI archive, with every digest and size checked."""
    with tarfile.open(path) as tar:

        def blob(descriptor: dict[str, Any]) -> bytes:
            member = tar.extractfile("blobs/" + descriptor["digest"].replace(":", "/"))
            assert member is not None
            data = member.read()
            if "sha256:" + hashlib.sha256(data).hexdigest() != descriptor["digest"] or len(data) != descriptor["size"]:
                raise ImageError(f"{path}: blob {descriptor['digest']} does not match its descriptor")
            return data

        layout = json.loads(tar.extractfile("oci-layout").read())  # type: ignore[union-attr]
        if layout.get("imageLayoutVersion") != "1.0.0":
            raise ImageError(f"{path}: not an OCI image layout")
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest = json.loads(blob(index["manifests"][0]))
        config = json.loads(blob(manifest["config"]))
        diff_ids = []
        for layer in manifest["layers"]:
            diff_ids.append("sha256:" + hashlib.sha256(gzip.decompress(blob(layer))).hexdigest())
        if diff_ids != config["rootfs"]["diff_ids"]:
            raise ImageError(f"{path}: the config's diff_ids do not match the layers")
    return index, manifest, config


def unpack_oci_archive(path: Path, dest: Path) -> dict[str, Any]:
    """Apply the layers of the OCI archive ``path`` in order into ``dest`` (whiteouts honoured); return the
    image configuration. Owners are kept when run as root."""
    _, manifest, config = read_oci_archive(path)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path) as outer:
        for layer in manifest["layers"]:
            data = outer.extractfile("blobs/" + layer["digest"].replace(":", "/")).read()  # type: ignore[union-attr]
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r:") as tar:
                for member in tar:
                    parent, _, name = member.name.rpartition("/")
                    target_dir = dest / parent
                    if name == _OPAQUE_MARKER:
                        for child in list(target_dir.iterdir()) if target_dir.is_dir() else []:
                            _remove(child)
                        continue
                    if name.startswith(_WHITEOUT_PREFIX):
                        _remove(target_dir / name[len(_WHITEOUT_PREFIX):])
                        continue
                    target = dest / member.name
                    if target.is_symlink() or (target.exists() and not (target.is_dir() and member.isdir())):
                        _remove(target)
                    tar.extract(member, dest, numeric_owner=True, filter="fully_trusted")
    return config


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path)


# --------------------------------------------------------------------------------------------------------------
# The cache and the steps


def cache_dir() -> Path:
    override = os.environ.get("WSO_IMAGES_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "workspace-secrets-operator" / "images"


def _key(obj: Any) -> str:
    return hashlib.sha256(_canonical({"builder": BUILDER_VERSION, **obj})).hexdigest()


def _log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class CachedLayer:
    """A built layer in the cache: ``dir/tree`` (the files, overlay-style whiteouts included), ``dir/layer.json``
    and, once packed, ``dir/layer.tar.gz``. ``id`` is unique to this build of the layer: the keys of the layers
    above include it, so a rebuilt lower layer (``--refresh``) never sits under layers made on its predecessor."""

    name: str
    key: str
    id: str
    dir: Path
    description: str

    @property
    def tree(self) -> Path:
        return self.dir / "tree"

    def blob(self) -> Blob:
        """The layer's gzip tar, packed on first use."""
        meta = self.dir / "blob.json"
        if meta.exists():
            data = json.loads(meta.read_text())
            return Blob(self.dir / "layer.tar.gz", data["digest"], data["size"], data["diff_id"])
        started = time.monotonic()
        blob = pack_layer(self.tree, self.dir / "layer.tar.gz")
        _atomic_write(meta, json.dumps({"digest": blob.digest, "size": blob.size, "diff_id": blob.diff_id}))
        _log(f"packed the {self.name} layer: {blob.size / 1e6:.1f} MB in {time.monotonic() - started:.1f}s")
        return blob


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ImageError("building images needs root (debootstrap, overlay mounts, chroot): run as root")
    for tool in ("debootstrap", "unshare", "chroot", "mount"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise ImageError(f"{tool} is missing: run tools/install-system-deps.sh (Debian: apt-get install {tool})")


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One build at a time per cache (other processes wait)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _Builder:
    def __init__(self, root: Path, *, refresh: bool = False) -> None:
        self.root = root
        self.refresh = refresh
        self.rebuilt: set[str] = set()
        self.used: list[CachedLayer] = []
        self.layers_dir = root / "layers"
        self.layers_dir.mkdir(parents=True, exist_ok=True)

    def _cached(self, name: str, spec: dict[str, Any], description: str) -> tuple[CachedLayer, bool]:
        key = _key(spec)
        directory = self.layers_dir / f"{name}-{key[:16]}"
        meta = directory / "layer.json"
        if meta.exists() and not (self.refresh and key not in self.rebuilt):
            layer = CachedLayer(name, key, json.loads(meta.read_text())["id"], directory, description)
            self.used.append(layer)
            return layer, True
        return CachedLayer(name, key, "", directory, description), False

    def _finish(self, layer: CachedLayer, staging: Path, started: float) -> CachedLayer:
        layer_id = hashlib.sha256(f"{layer.key}:{time.time_ns()}:{os.urandom(8).hex()}".encode()).hexdigest()
        (staging / "layer.json").write_text(
            json.dumps({"key": layer.key, "id": layer_id, "description": layer.description}, indent=1)
        )
        if layer.dir.exists():
            shutil.rmtree(layer.dir)
        staging.rename(layer.dir)
        self.rebuilt.add(layer.key)
        built = CachedLayer(layer.name, layer.key, layer_id, layer.dir, layer.description)
        self.used.append(built)
        _log(f"built the {layer.name} layer in {time.monotonic() - started:.1f}s ({_du(built.tree) / 1e6:.0f} MB)")
        return built

    def _staging(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.layers_dir))

    def minbase(self, suite: str) -> CachedLayer:
        spec = {
            "kind": "debootstrap", "suite": suite, "variant": "minbase", "mirror": DEBIAN_MIRROR,
            "security": DEBIAN_SECURITY_MIRROR, "excludes": DPKG_EXCLUDES, "cleanup": APT_CLEANUP,
        }
        layer, done = self._cached(f"minbase-{suite}", spec, f"debootstrap --variant=minbase {suite} (slimmed)")
        if done:
            return layer
        started = time.monotonic()
        _log(f"debootstrap --variant=minbase {suite} (once per cache)")
        staging = self._staging(layer.name)
        try:
            _run(
                ["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child",
                 "debootstrap", "--variant=minbase", "--components=main", suite, str(staging / "tree"),
                 DEBIAN_MIRROR],
                log=staging / "build.log",
            )
            _slim_debian_tree(staging / "tree", suite)
        except BaseException:
            _rmtree(staging)
            raise
        return self._finish(layer, staging, started)

    def step(
        self,
        name: str,
        lowers: Sequence[CachedLayer],
        commands: Sequence[str],
        *,
        keep: Sequence[str] = (),
        context: Callable[[Path], object] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> CachedLayer:
        """A layer made by running ``commands`` in a chroot over ``lowers`` (top first); its tree is the overlay's
        upper directory, cut down to ``keep`` (and the parent directories) when given. ``context`` fills a
        directory that the commands see read-only at /mnt; ``inputs`` (hashed into the key) must name everything
        that determines what it puts there."""
        spec = {"kind": "step", "lowers": [l.id for l in lowers], "commands": list(commands), "keep": list(keep),
                "inputs": inputs or {}}
        layer, done = self._cached(name, spec, " && ".join(commands))
        if done:
            return layer
        started = time.monotonic()
        _log(f"building the {name} layer")
        staging = self._staging(name)
        try:
            tree, work, merged, ctx = (staging / d for d in ("tree", "work", "merged", "context"))
            for d in (tree, work, merged, ctx):
                d.mkdir()
            if context:
                context(ctx)
            env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
                   **PIP_BUILD_ENV, **_passthrough_env()}
            ca = _host_ca_bundle()
            if ca:
                shutil.copyfile(ca, ctx / "host-ca.crt")
                env["PIP_CERT"] = "/mnt/host-ca.crt"
            _run_chroot(
                lowers=[l.tree for l in lowers], upper=tree, work=work, merged=merged, context=ctx,
                script="set -eux\n" + "\n".join(commands) + "\n", env=env, log=staging / "build.log",
            )
            _rmtree(work)
            shutil.rmtree(ctx)
            merged.rmdir()
            if keep:
                _keep_only(tree, keep)
        except BaseException:
            _rmtree(staging)
            raise
        return self._finish(layer, staging, started)


def _rmtree(path: Path) -> None:
    """Remove a tree we made (overlay work directories hold a mode-000 'work' directory; root removes it)."""
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _du(path: Path) -> int:
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _host_ca_bundle() -> Path | None:
    """The host's CA bundle, for pip inside the chroot (the host may reach PyPI through a TLS-inspecting proxy
    whose CA only the host trusts). It is in the step's read-only context, never in a layer."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      os.environ.get("REQUESTS_CA_BUNDLE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _passthrough_env() -> dict[str, str]:
    names = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "PIP_TRUSTED_HOST",
             "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
    return {n: os.environ[n] for n in names if n in os.environ}


def _run(argv: Sequence[str], *, log: Path) -> None:
    with log.open("ab") as out:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        raise ImageError(f"{shlex.join(argv[:9])} ... failed (exit {proc.returncode}); the end of {log}:\n"
                         + "\n".join(tail))


def _namespace_argv(script: str) -> list[str]:
    """/bin/sh running ``script`` in new mount and PID namespaces: its mounts vanish with it, and it (with
    everything it started) is killed if we die."""
    return ["unshare", "--mount", "--pid", "--propagation", "private", "--fork", "--kill-child", "/bin/sh", "-c",
            script]


def _dev_mounts(root: str) -> list[str]:
    return [
        f"mount -t proc proc {root}/proc",
        f"mount -t tmpfs -o mode=0755,nosuid tmpfs {root}/dev",
        f"for d in null zero full random urandom tty; do touch {root}/dev/$d; mount --bind /dev/$d {root}/dev/$d; done",
        f"ln -s /proc/self/fd {root}/dev/fd; mkdir {root}/dev/pts {root}/dev/shm",
        f"mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs {root}/tmp",
    ]


def _run_chroot(*, lowers: Sequence[Path], upper: Path, work: Path, merged: Path, context: Path, script: str,
                env: dict[str, str], log: Path) -> None:
    """Run ``script`` with /bin/sh in a chroot of overlay(lowers, upper) in new namespaces, with /proc, a /dev of
    the usual character devices, a tmpfs /tmp, the host's resolv.conf (read-only) and ``context`` at /mnt
    (read-only). None of these mounts changes the upper directory."""
    q = shlex.quote
    m = q(str(merged))
    options = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
    inner = shlex.join(["chroot", str(merged), "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in env.items()],
                        "/bin/sh", "-c", script])
    wrapper = "\n".join([
        "set -eu",
        f"mount -t overlay overlay -o {q(options)} {m}",
        *_dev_mounts(m),
        f"mount --bind -o ro /etc/resolv.conf {m}/etc/resolv.conf",
        f"mount --bind -o ro {q(str(context))} {m}/mnt",
        f"exec {inner}",
    ])
    _run(_namespace_argv(wrapper), log=log)


def _slim_debian_tree(tree: Path, suite: str) -> None:
    """Make a fresh debootstrap tree like Debian's slim images: the suite's updates and security sources, dpkg
    path excludes (and their effect on what is installed), no host files, no logs or package lists."""
    (tree / "etc/apt/sources.list").unlink(missing_ok=True)
    (tree / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    (tree / "etc/apt/sources.list.d/debian.sources").write_text(
        f"Types: deb\nURIs: {DEBIAN_MIRROR}\nSuites: {suite} {suite}-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        f"Types: deb\nURIs: {DEBIAN_SECURITY_MIRROR}\nSuites: {suite}-security\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    (tree / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True, exist_ok=True)
    (tree / "etc/dpkg/dpkg.cfg.d/slim").write_text(
        "# Like Debian's slim images: no documentation but copyright files, no man pages, no translations.\n"
        + "\n".join(DPKG_EXCLUDES) + "\n"
    )
    doc = tree / "usr/share/doc"
    if doc.is_dir():
        for package in doc.iterdir():
            if package.is_dir() and not package.is_symlink():
                for entry in package.iterdir():
                    if entry.name != "copyright":
                        _remove(entry)
                if not any(package.iterdir()):
                    package.rmdir()
            else:
                _remove(package)
    for directory in ("usr/share/info", "usr/share/linda", "usr/share/lintian/overrides", "usr/share/locale",
                      "usr/share/man"):
        if (tree / directory).is_dir():
            for entry in (tree / directory).iterdir():
                _remove(entry)
    for name in ("etc/resolv.conf", "etc/hostname"):
        _remove(tree / name)
        (tree / name).write_text("")
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/log/apt/*",
                    "var/log/dpkg.log", "var/log/alternatives.log", "var/log/bootstrap.log",
                    "var/cache/debconf/*-old", "var/lib/dpkg/*-old", "var/cache/ldconfig/aux-cache"):
        for path in tree.glob(pattern):
            if path.name not in ("partial", "lock", "auxfiles"):
                _remove(path)


def _keep_only(tree: Path, keep: Sequence[str]) -> None:
    """Remove everything under ``tree`` but the ``keep`` paths (absolute, as seen in the image), what is under
    them, and their parent directories."""
    wanted = [PurePosix(k.strip("/")) for k in keep]

    def visit(directory: Path, rel: PurePosix) -> None:
        for entry in list(directory.iterdir()):
            path = rel / entry.name
            if any(path == k or k.is_relative_to(path) and entry.is_dir() and not entry.is_symlink()
                   for k in wanted):
                if not any(path == k for k in wanted):
                    visit(entry, path)
            elif not any(path.is_relative_to(k) for k in wanted):
                _remove(entry)

    visit(tree, PurePosix(""))
    missing = [k for k in keep if not (tree / k.strip("/")).exists() and not (tree / k.strip("/")).is_symlink()]
    if missing:
        raise ImageError(f"the step produced none of {missing}")


# --------------------------------------------------------------------------------------------------------------
# The images


def source_files(sources: Sequence[str], root: Path = REPO_ROOT) -> list[Path]:
    """The files of ``sources`` (files or directories relative to ``root``) that go into the operator's wheel:
    sorted, without bytecode caches or build metadata."""
    files: list[Path] = []
    for source in sources:
        path = root / source
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.endswith(".egg-info"))
                files += [Path(dirpath, f) for f in sorted(filenames) if not f.endswith((".pyc", ".pyo"))]
        elif path.is_file():
            files.append(path)
        else:
            raise ImageError(f"source {source!r} of the operator image does not exist under {root}")
    return files


def source_hash(sources: Sequence[str], root: Path = REPO_ROOT) -> str:
    digest = hashlib.sha256()
    for path in source_files(sources, root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(b"x" if os.access(path, os.X_OK) else b"-")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def build_wheel(sources: Sequence[str], out_dir: Path, root: Path = REPO_ROOT) -> Path:
    """Build the operator's wheel from a copy of ``sources`` (so the work tree gets no build/ or egg-info)."""
    with tempfile.TemporaryDirectory(prefix="wso-wheel-") as tmp:
        src = Path(tmp) / "src"
        for path in source_files(sources, root):
            target = src / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out_dir), str(src)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise ImageError(f"building the operator's wheel failed:\n{proc.stdout}{proc.stderr}")
    wheels = list(out_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise ImageError(f"expected one wheel in {out_dir}, found {wheels}")
    return wheels[0]


def _image_layers(builder: _Builder, recipe: Recipe) -> list[CachedLayer]:
    """The cached layers of ``recipe``'s image (built when missing), bottom first."""
    minbase = builder.minbase(recipe.suite)
    if recipe.scratch:
        return [builder.step(f"{recipe.name}-files", [minbase], base_commands(recipe), keep=recipe.keep)]
    base = builder.step(f"{recipe.name}-base", [minbase], base_commands(recipe))
    if recipe.python is None:
        return [minbase, base]
    py = recipe.python
    pyproject = REPO_ROOT / "pyproject.toml"
    build = builder.step(f"{recipe.name}-build", [base, minbase], apt_commands(recipe.build_packages, upgrade=False))
    requirements = "\n".join(python_requirements(pyproject, py.extras)) + "\n"
    deps = builder.step(
        f"{recipe.name}-deps", [build, base, minbase],
        [f"python3 -m venv {py.venv}", f"{venv_pip(py)} install -r /mnt/requirements.txt"],
        keep=[py.venv],
        context=lambda ctx: (ctx / "requirements.txt").write_text(requirements),
        inputs={"requirements": requirements},
    )
    app = builder.step(
        f"{recipe.name}-app", [deps, build, base, minbase],
        [f"{venv_pip(py)} install --no-deps /mnt/*.whl", *venv_checks(recipe)],
        keep=[py.venv],
        context=lambda ctx: build_wheel(py.sources, ctx),
        inputs={"sources": source_hash(py.sources)},
    )
    return [minbase, base, deps, app]


def build(name: str, *, refresh: bool = False) -> Path:
    """Build image ``name`` (``pause``, ``workspace`` or ``operator``) from its recipe and return the path of its
    OCI archive (for ``ctr -n k8s.io images import``; the image is named ``IMAGES[name]``). Cached: a warm call
    only checks keys (the operator's source hash included). ``refresh`` rebuilds every layer (new Debian or
    PyPI versions); otherwise cached layers are reused as long as their recipe is unchanged."""
    recipe = load_recipe(name)
    _require_root()
    root = cache_dir()
    started = time.monotonic()
    with _locked(root):
        builder = _Builder(root, refresh=refresh)
        layers = _image_layers(builder, recipe)
        blobs = [layer.blob() for layer in layers]
        config = image_config(container_config(recipe), blobs, [layer.description for layer in layers])
        key = _key({"ref": recipe.ref, "config": config, "layers": [b.digest for b in blobs]})
        out = root / "oci" / f"{name}-{key[:16]}.tar"
        if not out.exists():
            write_oci_archive(out, recipe.ref, blobs, config)
            for old in out.parent.glob(f"{name}-*.tar"):
                if old != out:
                    old.unlink()
        _record_use(root, name, builder.used)
    _log(f"{recipe.ref}: {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - started:.1f}s")
    return out


def _record_use(root: Path, name: str, layers: Sequence[CachedLayer]) -> None:
    path = root / "in-use.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = sorted({layer.dir.name for layer in layers})
    _atomic_write(path, json.dumps(data, indent=1, sort_keys=True))


def prune() -> list[Path]:
    """Remove cached layers no image's latest build used, leftovers of interrupted builds, and the root
    filesystems :func:`run_in_image` unpacked."""
    root = cache_dir()
    removed: list[Path] = []
    with _locked(root):
        if (root / "rootfs").exists():
            _rmtree(root / "rootfs")
            removed.append(root / "rootfs")
        path = root / "in-use.json"
        used = {d for dirs in (json.loads(path.read_text()) if path.exists() else {}).values() for d in dirs}
        for directory in sorted((root / "layers").glob("*")) if (root / "layers").is_dir() else []:
            if directory.name not in used:
                _rmtree(directory)
                removed.append(directory)
    return removed


def run_in_image(archive: Path, argv: Sequence[str], *, user: str | None = None,
                 env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in the image of ``archive`` the way a pod with ``readOnlyRootFilesystem`` would: the unpacked
    layers bind-mounted read-only as the root, a tmpfs /tmp, /proc and /dev, as the image's user (or ``user``,
    "uid:gid") with no supplementary groups, the image's environment. For checking images, not a runtime."""
    root = cache_dir()
    index, manifest, _ = read_oci_archive(archive)
    ref = index["manifests"][0]["annotations"][ANNOTATION_CONTAINERD_NAME]
    image_dir = root / "rootfs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", ref)
    rootfs = image_dir / index["manifests"][0]["digest"].replace(":", "-")
    with _locked(root):
        if not (rootfs / ".complete").exists():
            for old in image_dir.glob("*") if image_dir.is_dir() else []:
                _rmtree(old)  # earlier builds of the same image
            config = unpack_oci_archive(archive, rootfs / "root")
            (rootfs / "config.json").write_text(json.dumps(config))
            (rootfs / ".complete").write_text("")
    config = json.loads((rootfs / "config.json").read_text())["config"]
    image_env = dict(e.split("=", 1) for e in config.get("Env", []))
    image_env.update(env or {})
    uid, _, gid = (user or config.get("User") or "0:0").partition(":")
    r = shlex.quote(str(rootfs / "root"))
    inner = shlex.join([
        "chroot", f"--userspec={uid}:{gid or uid}", "--groups=", str(rootfs / "root"), "/usr/bin/env", "-i",
        *[f"{k}={v}" for k, v in image_env.items()], *argv,
    ])
    wrapper = "\n".join([
        "set -eu",
        f"mount --bind {r} {r}",
        f"mount -o remount,bind,ro {r}",
        *_dev_mounts(r),
        f"cd {shlex.quote(str(rootfs / 'root'))}/{shlex.quote(config.get('WorkingDir', '/').lstrip('/'))}",
        f"exec {inner}",
    ])
    return subprocess.run(_namespace_argv(wrapper), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


# --------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster.images", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build images and print the paths of their OCI archives")
    p_build.add_argument("names", nargs="+", choices=[*IMAGES, "all"])
    p_build.add_argument("--refresh", action="store_true", help="rebuild every layer (new package versions)")
    sub.add_parser("refs", help="print each image's name and reference")
    p_docker = sub.add_parser("dockerfile", help="print the Dockerfile generated from the operator's recipe")
    group = p_docker.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write it to {DOCKERFILE}")
    group.add_argument("--check", action="store_true", help=f"exit 1 when {DOCKERFILE} differs")
    sub.add_parser("prune", help="remove cached layers no image's latest build used")
    p_run = sub.add_parser("run", help="run a command in a built image (read-only root, the image's user)")
    p_run.add_argument("name", choices=list(IMAGES))
    p_run.add_argument("--user", help="uid:gid instead of the image's user")
    p_run.add_argument("argv", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            names = list(IMAGES) if "all" in args.names else args.names
            for name in names:
                print(build(name, refresh=args.refresh), flush=True)
        elif args.command == "refs":
            for name, ref in IMAGES.items():
                print(f"{name} {ref}")
        elif args.command == "dockerfile":
            text = render_dockerfile(load_recipe("operator"))
            if args.write:
                DOCKERFILE.write_text(text)
            elif args.check:
                if DOCKERFILE.read_text() != text:
                    print(f"{DOCKERFILE} differs from the recipe: run python -m devcluster.images dockerfile --write",
                          file=sys.stderr)
                    return 1
            else:
                sys.stdout.write(text)
        elif args.command == "prune":
            for path in prune():
                print(f"removed {path}")
        elif args.command == "run":
            proc = run_in_image(build(args.name), args.argv, user=args.user)
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
            return proc.returncode
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
