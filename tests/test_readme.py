"""README.md runs as written, and the docs' commands name what exists.

Every shell command in README.md's code blocks is checked. The cheap ones run
for real, in order, in a temporary folder laid out as the README assumes:
`../shared/data` holds a small synthetic Kaggle dataset (the 512x512 set, the
test photos, full-size masks), `photo.jpg` is a photo and `photos/` a car's 16
views. `carmask serve` (it blocks) is parsed by click as it would run: the verb,
every option and every value converted; `pip install` names only extras that
pyproject.toml has; `curl` is sent, in process, to the app that serve builds,
at the address serve listens on. The Python block runs; the models table is
what `carmask models` prints; the test command is the one `.ci/run` runs.

The commands of docs/CLI.md, SERVICE.md, TRAINING.md and API.md are parsed the
same way (paths are not looked up: they name the real data), and every
relative link of the README and the docs leads to a file and a heading.
RESULTS.md's commands are lab notes of their day and are not checked.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from carmask.cli import main

pytestmark = pytest.mark.slow  # the quick run (-m "not slow") leaves this module out

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [ROOT / "docs" / name for name in ("CLI.md", "SERVICE.md", "TRAINING.md", "API.md")]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SHELL = ("bash", "sh", "shell")
TRAIN_QUICKLY = ["--epochs", "1"]  # appended to `carmask train`: one epoch on the synthetic set


# -- reading the pages ------------------------------------------------------------------------------


def code_blocks(path: Path, languages) -> list[str]:
    return [body for language, body in FENCE.findall(path.read_text(encoding="utf-8")) if language in languages]


def shell_commands(path: Path) -> list[tuple[str, list[str]]]:
    """(line, its words) for every command of the page's shell blocks; a
    backslash-newline continues a line, `#` starts a comment."""
    commands = []
    for body in code_blocks(path, SHELL):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append((" ".join(line.split(" #")[0].split()), words))
    return commands


def carmask_args(words: list[str]) -> list[str] | None:
    """The arguments of a `carmask ...` or `torchrun ... -m carmask ...` command, else None."""
    if words[0] == "carmask":
        return words[1:]
    if words[0] == "torchrun" and "-m" in words and words[words.index("-m") + 1] == "carmask":
        return words[words.index("-m") + 2 :]
    return None


# -- checking without running -------------------------------------------------------------------------


def parse(args: list[str], monkeypatch) -> click.Context:
    """`carmask ARGS` through click as it would run, stopping before the verb's
    work: the group's options, the verb, every option and value (choices,
    ranges, WxH sizes, required options, extra arguments). Paths are taken as
    written, not looked up."""
    with monkeypatch.context() as patch:
        patch.setattr(click.Path, "convert", lambda self, value, param, ctx: self.coerce_path_result(value))
        group = main.make_context("carmask", list(args))
        verb_and_rest = [*getattr(group, "_protected_args", []), *group.args]
        assert verb_and_rest, f"carmask {shlex.join(args)}: no verb"
        name, verb, rest = main.resolve_command(group, verb_and_rest)
        return verb.make_context(name, rest, parent=group)


def check_pip(words: list[str]) -> None:
    """`pip install ...`: carmask's extras are extras pyproject.toml has."""
    assert words[:2] == ["pip", "install"], words
    extras = set(pyproject_extras())
    for spec in (w for w in words[2:] if not w.startswith("-")):
        match = re.fullmatch(r"(carmask|\.)(?:\[([\w,-]+)\])?", spec)
        if match:
            named = set(filter(None, (match.group(2) or "").split(",")))
            assert named <= extras, f"{shlex.join(words)}: no extra {named - extras} in pyproject.toml"
        else:
            assert re.fullmatch(r"[A-Za-z0-9_.-]+(==[\w.+]+)?", spec), f"{shlex.join(words)}: {spec}?"


def pyproject_extras() -> list[str]:
    """The extras of pyproject.toml (read by hand: tomllib is Python 3.11+)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return re.findall(r"^([A-Za-z0-9_-]+)\s*=", section, re.M)


def ci_commands() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip().startswith(("pip install", "python -m pytest"))]


# -- the service, in process ----------------------------------------------------------------------------


class Service:
    """What `carmask serve` serves, built once, at the address it listens on."""

    def __init__(self):
        self.address, self.client = None, None

    def listen(self, context: click.Context) -> None:
        from fastapi.testclient import TestClient

        from carmask.serve import create_app
        from carmask.serve.guard import local_hosts

        params = context.params
        address = (params["host"], params["port"])
        if self.client is None or self.address != address:
            app = create_app(
                model=params["model"],
                device=params["device"],
                api_key=params["api_key"],
                hosts=local_hosts(params["host"], params["allow_host"]),
            )
            self.client = TestClient(app, base_url=f"http://{params['host']}:{params['port']}")
            self.address = address

    def curl(self, words: list[str], folder: Path) -> None:
        """Send what `curl -F ... -H ... URL -o FILE` sends; the answer must be an image."""
        fields, files, headers, output, url, rest = {}, {}, {}, None, None, list(words[1:])
        while rest:
            word = rest.pop(0)
            if word == "-F":
                key, value = rest.pop(0).split("=", 1)
                if value.startswith("@"):
                    files[key] = (value[1:], (folder / value[1:]).read_bytes())
                else:
                    fields[key] = value
            elif word == "-H":
                key, value = rest.pop(0).split(":", 1)
                headers[key] = value.strip()
            elif word == "-o":
                output = folder / rest.pop(0)
            elif not word.startswith("-"):
                url = word
            else:
                raise AssertionError(f"{shlex.join(words)}: the test does not know curl's {word}")
        assert url and self.client is not None, f"{shlex.join(words)}: no URL, or no `carmask serve` before it"
        where = urlsplit(url)
        assert (where.hostname, where.port) == self.address, f"{url}: not where `carmask serve` listens"
        answer = self.client.post(where.path, data=fields, files=files, headers=headers)
        assert answer.status_code == 200, (shlex.join(words), answer.status_code, answer.text[:300])
        assert answer.headers["content-type"].startswith("image/"), answer.headers["content-type"]
        if output:
            output.write_bytes(answer.content)


# -- the folder the README assumes --------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """ROOT/shared/data as the README names it: carvana-512 (train/, train_masks/),
    carvana-test-1918/test, carvana-1918-masks/train_masks (masks at 1918x1280)."""
    from carmask.synth import make_dataset

    root = tmp_path_factory.mktemp("readme")
    data = root / "shared" / "data"
    dataset = make_dataset(data / "carvana-512", cars=3, test_cars=1, size=(192, 128), seed=5)
    (data / "carvana-test-1918").mkdir()
    shutil.move(dataset / "test", data / "carvana-test-1918" / "test")
    full_size = data / "carvana-1918-masks" / "train_masks"
    full_size.mkdir(parents=True)
    for mask in sorted((dataset / "train_masks").iterdir()):
        with Image.open(mask) as small:
            small.resize((1918, 1280), Image.NEAREST).save(full_size / mask.name)
    return root


def workspace(data_root: Path, name: str) -> Path:
    """A fresh folder beside shared/, so that ../shared/data is the data: photo.jpg
    and photos/car_01.jpg ... car_16.jpg (a test car's views)."""
    folder = data_root / name
    (folder / "photos").mkdir(parents=True)
    views = sorted((data_root / "shared" / "data" / "carvana-test-1918" / "test").glob("*.jpg"))
    for number, view in enumerate(views, 1):
        shutil.copy(view, folder / "photos" / f"car_{number:02d}.jpg")
    shutil.copy(views[0], folder / "photo.jpg")
    return folder


# -- the tests ----------------------------------------------------------------------------------------------


def test_the_readme_is_a_first_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move the detail to docs/"


def test_the_readme_says_what_ci_runs():
    """.ci/run installs as README.md says (quietly: `-q`) and runs its test command, word for word."""
    written = [words for _, words in shell_commands(README)]
    for command in ci_commands():
        words = shlex.split(command)
        if words[:2] == ["pip", "install"]:
            words = [word for word in words if word != "-q"]
        assert words in written, f"`{command}` (.ci/run) is not written in README.md as CI runs it"
    assert shlex.split("python -m pytest -q") in written


def test_every_readme_command_runs_as_written(data_root, monkeypatch):
    folder = workspace(data_root, "cli")
    monkeypatch.chdir(folder)
    service, ran = Service(), []
    for line, words in shell_commands(README):
        args = carmask_args(words)
        if args is not None and args[0] == "serve":
            service.listen(parse(args, monkeypatch))  # it would block
        elif args is not None:
            parse(args, monkeypatch)
            result = CliRunner().invoke(main, args + (TRAIN_QUICKLY if args[0] == "train" else []))
            assert result.exit_code == 0, f"{line}\n{result.output}"
            ran.append((args[0], result.stdout))
        elif words[0] == "curl":
            service.curl(words, folder)
        elif words[0] == "pip":
            check_pip(words)
        else:
            assert line == "python -m pytest -q", f"{line}: the test does not know how to check it"
    verbs = [verb for verb, _ in ran]
    assert {"cutout", "train", "evaluate", "predict"} <= set(verbs), verbs
    outputs = dict(ran)
    assert "best model: runs/seed/best.pt" in outputs["train"]
    assert all(re.search(r"mean dice 0\.\d+ over \d+ images", out) for verb, out in ran if verb == "evaluate")
    rows = (folder / "submission.csv").read_text().splitlines()
    assert rows[0] == "img,rle_mask" and len(rows) == 1 + len(list((folder / "photos").iterdir()))
    with Image.open(folder / "photo.png") as cut:
        assert cut.mode == "RGBA"


def test_the_readme_python_runs(data_root, monkeypatch):
    folder = workspace(data_root, "python")
    monkeypatch.chdir(folder)
    blocks = code_blocks(README, ("python",))
    assert blocks
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)
    with Image.open(folder / "photo.png") as cut:
        assert cut.mode == "RGBA" and cut.size == Image.open(folder / "photo.jpg").size
    assert np.asarray(namespace["green"]).shape[:2] == (128, 192)


def test_the_models_table_is_what_carmask_models_prints():
    tables = [block for block in code_blocks(README, ("",)) if block.startswith("$ carmask models\n")]
    assert len(tables) == 1, "README.md shows `carmask models` once, with its output"
    printed = CliRunner().invoke(main, ["models"])
    assert printed.exit_code == 0, printed.output
    shown = [line.rstrip() for line in tables[0].splitlines()[1:]]
    assert shown == [line.rstrip() for line in printed.stdout.splitlines()]


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_the_docs_commands_name_what_exists(doc, data_root, monkeypatch):
    folder = workspace(data_root, f"doc-{doc.stem}")
    service = Service()
    commands = shell_commands(doc)
    for line, words in commands:
        args = carmask_args(words)
        if args is not None:
            context = parse(args, monkeypatch)
            if context.command.name == "serve":
                service.listen(context)
        elif words[0] == "curl":
            service.curl(words, folder)
        elif words[0] == "pip":
            check_pip(words)
        else:
            raise AssertionError(f"{doc.name}: {line}: the test does not know how to check it")


def test_a_wrong_flag_or_verb_fails_the_check(monkeypatch):
    """The check itself: what does not exist is caught."""
    with pytest.raises(click.UsageError):
        parse(["predict", "photos/", "-o", "x.csv", "--no-such-flag"], monkeypatch)
    with pytest.raises(click.UsageError):
        parse(["predikt", "photos/", "-o", "x.csv"], monkeypatch)
    with pytest.raises(click.UsageError):
        parse(["cutout", "photos/", "-o", "out/", "--sets", "sometimes"], monkeypatch)
    with pytest.raises(click.UsageError):
        parse(["predict", "photos/"], monkeypatch)  # -o is required
    with pytest.raises(AssertionError):
        check_pip(["pip", "install", "carmask[gpu]"])


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda path: path.name)
def test_links_lead_somewhere(page):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}: no such file"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", FENCE.sub("", linked.read_text(encoding="utf-8")), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page.name}: {target}: no such heading"
