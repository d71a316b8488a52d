"""scripts/lib.sh's install_tree, run by bash as start.sh runs it: an update keeps what
the operator changed in /opt/smtpguard/conf (review rev121 F2: re-running start.sh put
the sample back over the operator's config, and every real domain got 553)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.service import ROOT

LIB = ROOT / "scripts" / "lib.sh"


def install_tree(src: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", 'source "$0" && install_tree "$1" "$2"', str(LIB), str(src), str(dest)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def shipped(src: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)


def test_an_update_keeps_the_operators_edits_and_additions(tmp_path: Path) -> None:
    src, dest = tmp_path / "checkout-conf", tmp_path / "opt-conf"
    shipped(src, {"smtpguard.toml": "sample 1\n", "sub/example.toml": "example 1\n"})
    first = install_tree(src, dest)
    assert first.stderr == ""
    assert (dest / "smtpguard.toml").read_text() == "sample 1\n"
    assert (dest / "sub" / "example.toml").stat().st_mode & 0o004  # readable by all

    (dest / "smtpguard.toml").write_text("operator's\n")
    (dest / "mine.toml").write_text("added by the operator\n")
    shipped(src, {"smtpguard.toml": "sample 2\n", "sub/example.toml": "example 2\n"})
    second = install_tree(src, dest)
    assert (dest / "smtpguard.toml").read_text() == "operator's\n"
    assert (dest / "smtpguard.toml.dist").read_text() == "sample 2\n"
    assert f"kept your {dest}/smtpguard.toml" in second.stderr
    assert (dest / "mine.toml").read_text() == "added by the operator\n"
    # Not edited since it was shipped: updated, silently.
    assert (dest / "sub" / "example.toml").read_text() == "example 2\n"
    assert not (dest / "sub" / "example.toml.dist").exists()
    assert "example.toml" not in second.stderr

    # Once the operator takes the new sample, the next update replaces it again.
    (dest / "smtpguard.toml.dist").replace(dest / "smtpguard.toml")
    shipped(src, {"smtpguard.toml": "sample 3\n"})
    third = install_tree(src, dest)
    assert (dest / "smtpguard.toml").read_text() == "sample 3\n"
    assert third.stderr == ""
    assert not (tmp_path / "opt-conf.new").exists()


def test_an_install_without_a_record_keeps_every_file_that_differs(tmp_path: Path) -> None:
    """An install by an older start.sh has no record of what it shipped: a file that
    differs may be the operator's, so it stays."""
    src, dest = tmp_path / "checkout-conf", tmp_path / "opt-conf"
    shipped(src, {"smtpguard.toml": "new sample\n", "same.toml": "same\n"})
    shipped(dest, {"smtpguard.toml": "old sample or edited\n", "same.toml": "same\n"})
    result = install_tree(src, dest)
    assert (dest / "smtpguard.toml").read_text() == "old sample or edited\n"
    assert (dest / "smtpguard.toml.dist").read_text() == "new sample\n"
    assert "same.toml" not in result.stderr
    assert (dest / ".shipped.sha256").is_file()


def test_an_update_keeps_the_mode_of_a_file_the_operator_kept(tmp_path: Path) -> None:
    """Review rev140 F3: the operator's config, kept, was made readable by all again
    (check-config refuses a loop_marker_key in such a file, so start.sh stopped after
    installing the new code, and the key was exposed meanwhile)."""
    src, dest = tmp_path / "checkout-conf", tmp_path / "opt-conf"
    shipped(src, {"smtpguard.toml": "sample 1\n", "sub/rules.txt": "rules 1\n"})
    install_tree(src, dest)
    (dest / "smtpguard.toml").write_text('loop_marker_key = "secret"\n')
    (dest / "smtpguard.toml").chmod(0o640)
    (dest / "mine.toml").write_text("added\n")
    (dest / "mine.toml").chmod(0o600)
    shipped(src, {"smtpguard.toml": "sample 2\n", "sub/rules.txt": "rules 2\n"})
    install_tree(src, dest)
    assert (dest / "smtpguard.toml").read_text() == 'loop_marker_key = "secret"\n'
    assert (dest / "smtpguard.toml").stat().st_mode & 0o777 == 0o640
    assert (dest / "mine.toml").stat().st_mode & 0o777 == 0o600
    # What was shipped is readable by all, as before.
    for shipped_file in ("smtpguard.toml.dist", "sub/rules.txt", ".shipped.sha256"):
        assert (dest / shipped_file).stat().st_mode & 0o004, shipped_file
    assert (dest / "sub").stat().st_mode & 0o005 == 0o005


def test_an_update_keeps_the_modes_of_shipped_files_and_directories(tmp_path: Path) -> None:
    """Review rev142 F5: a shipped file the operator only made 0640, and the tree they
    made 0750, came back readable by all."""
    src, dest = tmp_path / "checkout-conf", tmp_path / "opt-conf"
    shipped(src, {"smtpguard.toml": "sample 1\n", "sub/rules.txt": "rules 1\n"})
    install_tree(src, dest)
    (dest / "smtpguard.toml").chmod(0o640)
    dest.chmod(0o750)
    (dest / "sub").chmod(0o700)
    shipped(src, {"smtpguard.toml": "sample 2\n", "sub/rules.txt": "rules 2\n"})
    install_tree(src, dest)
    assert (dest / "smtpguard.toml").read_text() == "sample 2\n"  # not edited: updated
    assert (dest / "smtpguard.toml").stat().st_mode & 0o777 == 0o640
    assert dest.stat().st_mode & 0o777 == 0o750
    assert (dest / "sub").stat().st_mode & 0o777 == 0o700
    assert (dest / "sub" / "rules.txt").stat().st_mode & 0o777 == 0o644


def test_an_update_keeps_the_operators_links(tmp_path: Path) -> None:
    """Review rev151 F3: a config linked to the operator's own file under /etc became a
    copy of the sample (find -type f saw no link), silently, and start.sh then ran the
    sample; a DEST that was a link became a directory."""
    src, dest = tmp_path / "checkout-conf", tmp_path / "opt-conf"
    shipped(src, {"smtpguard.toml": "sample 1\n", "rules.txt": "rules 1\n"})
    install_tree(src, dest)
    etc = tmp_path / "etc-smtpguard.toml"
    etc.write_text("operator's real config\n")
    (dest / "smtpguard.toml").unlink()
    (dest / "smtpguard.toml").symlink_to(etc)
    (dest / "extra.toml").symlink_to(etc)
    shipped(src, {"smtpguard.toml": "sample 2\n", "rules.txt": "rules 2\n"})
    result = install_tree(src, dest)
    assert (dest / "smtpguard.toml").is_symlink()
    assert (dest / "smtpguard.toml").resolve() == etc
    assert etc.read_text() == "operator's real config\n"
    assert (dest / "smtpguard.toml.dist").read_text() == "sample 2\n"
    assert f"kept your link {dest}/smtpguard.toml" in result.stderr
    assert (dest / "extra.toml").is_symlink()
    assert (dest / "rules.txt").read_text() == "rules 2\n"

    # The whole tree linked elsewhere: the link stays, its target is updated.
    linked, target = tmp_path / "opt-conf-2", tmp_path / "etc-conf"
    install_tree(src, target)
    (target / "rules.txt").write_text("operator's rules\n")
    linked.symlink_to(target)
    shipped(src, {"smtpguard.toml": "sample 3\n", "rules.txt": "rules 3\n"})
    install_tree(src, linked)
    assert linked.is_symlink()
    assert linked.resolve() == target
    assert (target / "smtpguard.toml").read_text() == "sample 3\n"
    assert (target / "rules.txt").read_text() == "operator's rules\n"
    assert (target / "rules.txt.dist").read_text() == "rules 3\n"
