"""A rerun of `run` on an existing study: every stored setting is either refused when it differs
(one line naming the stored and the given value) or may change, and says so (studies.config.RESUME).
"""
from __future__ import annotations

import pytest
from conftest import TINY_RUN, cli

import search
import studies
from studies.config import RESUME, RunOptions, StudySettings, check_resume

def settings_and(**given) -> tuple[StudySettings, RunOptions]:
    """A synthetic study's settings (64 images of 8x8, batch 32) and the options of a rerun."""
    made = RunOptions.from_user(study="s", trials=2, synthetic=True, synthetic_images=64, synthetic_image_size=8,
                                proxy_hparams={"batch_size": 32})
    return StudySettings.from_options(made, "cpu"), RunOptions.from_user(study="s", trials=3, **given).check()


@pytest.mark.parametrize("given, stored_and_given", [
    (dict(synthetic_images=128), "--synthetic-images 64; it cannot change on resume (got 128)"),
    (dict(synthetic_image_size=16), "--synthetic-image-size 8; it cannot change on resume (got 16)"),
    (dict(proxy_hparams={"lr": 0.2}), '--proxy-hparams {"lr": 0.025}; it cannot change on resume (got {"lr": 0.2})'),
    (dict(proxy_hparams={"batch_size": 64}),
     '--proxy-hparams {"batch_size": 32}; it cannot change on resume (got {"batch_size": 64})'),
    (dict(rungs=1), "--rungs 2; it can only rise on resume (got 1)"),
    (dict(budget="100k"), "--budget 1000000; it cannot change on resume (got 100000)"),
])
def test_a_changed_setting_is_refused_naming_both_values(given, stored_and_given):
    settings, opts = settings_and(**given)
    with pytest.raises(ValueError, match="use another --study name") as e:
        check_resume(settings, opts)
    assert f"study 's' was created with {stored_and_given}" in str(e.value) and "\n" not in str(e.value)


def test_the_same_values_and_the_changeable_ones_pass():
    settings, opts = settings_and(synthetic=True, synthetic_images=64, synthetic_image_size=8,
                                  proxy_hparams={"batch_size": 32, "lr": 0.025}, rungs=3, heartbeat=20, max_retry=5)
    assert check_resume(settings, opts) == [("rungs", 3), ("heartbeat_interval", 20), ("max_retry", 5)]


def test_every_stored_option_is_in_the_table_and_its_help_says_what_a_resume_does(capsys):
    """Every option that becomes a stored setting has a rule, and `run --help` prints it."""
    assert {"synthetic_images", "synthetic_image_size", "proxy_hparams", "heartbeat", "max_retry", "rungs",
            "budget", "memory", "data"} <= set(RESUME)
    with pytest.raises(SystemExit):
        search.build_parser("run").parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.count("[stored; a resume refuses another value") == sum(r.rule == "fixed" for r in RESUME.values())
    assert "--heartbeat SECONDS seconds between" in text
    assert "(default: 60) [stored; a resume may change it, for the whole study" in text
    assert "[stored; a resume may raise it, never lower it" in text


def test_a_rerun_with_other_synthetic_images_is_refused_and_heartbeat_is_stored(home):
    rc, out, err = cli("run", "--study", "re", "--trials", "1", *TINY_RUN)
    assert rc == 0, err
    for flag, value in (("--synthetic-images", "128"), ("--synthetic-image-size", "16"),
                        ("--proxy-hparams", '{"lr": 0.5}')):
        rc, out, err = cli("run", "--study", "re", "--trials", "2", flag, value, "--device", "cpu", "--no-progress")
        assert rc == 2 and err.count("\n") == 1 and f"was created with {flag}" in err, err
    assert len(studies.open_study("re").get_trials()) == 1          # nothing ran
    rc, out, err = cli("run", "--study", "re", "--trials", "1", "--heartbeat", "7", "--device", "cpu",
                       "--no-progress")
    assert rc == 0, err
    assert "heartbeat_interval 60 -> 7, stored for the whole study" in out
    assert studies.open_study("re").user_attrs["heartbeat_interval"] == 7
