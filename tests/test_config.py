"""flagmetrics.config: `Settings.from_env`, overrides and validation, and reading `redis_sentinel`."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from flagmetrics.config import (
    SENTINEL_PORT,
    SentinelSpec,
    Settings,
    metric_prefix,
    parse_sentinel,
    redact_url,
)
from flagmetrics.exceptions import ConfigurationError, FlagMetricsError

pytestmark = pytest.mark.usefixtures("clean_env")


def test_from_empty_environment_gives_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_defaults() -> None:
    settings = Settings()
    assert (
        settings.redis_url,
        settings.key_prefix,
        settings.flush_interval_s,
        settings.buffer_capacity,
        settings.scrape_timeout_s,
        settings.max_flags,
        settings.max_variants_per_flag,
        settings.hash_key,
        settings.metrics_token,
    ) == (None, "flagmetrics", 1.0, 100_000, 0.5, 1_000, 100, "", None)


def test_from_env_reads_every_variable() -> None:
    env = {
        "FLAGMETRICS_REDIS_URL": "redis://cache:6379/2",
        "FLAGMETRICS_KEY_PREFIX": "app1",
        "FLAGMETRICS_FLUSH_INTERVAL_S": "2.5",
        "FLAGMETRICS_BUFFER_CAPACITY": "500",
        "FLAGMETRICS_SCRAPE_TIMEOUT_S": "0.25",
        "FLAGMETRICS_MAX_FLAGS": "10",
        "FLAGMETRICS_MAX_VARIANTS_PER_FLAG": "3",
        "FLAGMETRICS_HASH_KEY": "pepper",
        "FLAGMETRICS_METRICS_TOKEN": "s3cret",
    }
    assert Settings.from_env(env) == Settings(
        redis_url="redis://cache:6379/2",
        key_prefix="app1",
        flush_interval_s=2.5,
        buffer_capacity=500,
        scrape_timeout_s=0.25,
        max_flags=10,
        max_variants_per_flag=3,
        hash_key="pepper",
        metrics_token="s3cret",
    )


def test_from_env_reads_metrics_port_and_addr() -> None:
    settings = Settings.from_env({"FLAGMETRICS_METRICS_PORT": "9100", "FLAGMETRICS_METRICS_ADDR": "0.0.0.0"})
    assert (settings.metrics_port, settings.metrics_addr) == (9100, "0.0.0.0")


def test_metrics_port_is_off_by_default() -> None:
    assert (Settings().metrics_port, Settings().metrics_addr) == (None, "127.0.0.1")


def test_unparsable_metrics_port_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="`FLAGMETRICS_METRICS_PORT` must be a int"):
        Settings.from_env({"FLAGMETRICS_METRICS_PORT": "http"})


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_invalid_metrics_port(port: int) -> None:
    with pytest.raises(ConfigurationError, match="`metrics_port`"):
        Settings(metrics_port=port)


@pytest.mark.parametrize("port", [1, 65535])
def test_metrics_port_bounds_are_accepted(port: int) -> None:
    assert Settings(metrics_port=port).metrics_port == port


def test_from_env_parses_floats_and_ints_to_their_types() -> None:
    settings = Settings.from_env({"FLAGMETRICS_FLUSH_INTERVAL_S": "2", "FLAGMETRICS_MAX_FLAGS": "7"})
    assert (type(settings.flush_interval_s), type(settings.max_flags)) == (float, int)


def test_from_env_accepts_underscores_in_whole_numbers() -> None:
    assert Settings.from_env({"FLAGMETRICS_BUFFER_CAPACITY": "1_000_000"}).buffer_capacity == 1_000_000


def test_from_env_ignores_empty_variables() -> None:
    env = {"FLAGMETRICS_FLUSH_INTERVAL_S": "", "FLAGMETRICS_KEY_PREFIX": "", "FLAGMETRICS_METRICS_TOKEN": ""}
    assert Settings.from_env(env) == Settings()


def test_from_env_ignores_unrelated_variables() -> None:
    env = {"FLAGMETRICS_NOT_A_SETTING": "x", "REDIS_URL": "redis://elsewhere", "flagmetrics_max_flags": "3"}
    assert Settings.from_env(env) == Settings()


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAGMETRICS_MAX_FLAGS", "12")
    assert Settings.from_env().max_flags == 12


def test_overrides_win_over_environment() -> None:
    settings = Settings.from_env({"FLAGMETRICS_MAX_FLAGS": "12"}, max_flags=5)
    assert settings.max_flags == 5


def test_none_overrides_are_ignored() -> None:
    settings = Settings.from_env({"FLAGMETRICS_MAX_FLAGS": "12"}, max_flags=None, redis_url=None)
    assert settings.max_flags == 12


def test_overrides_apply_without_environment() -> None:
    assert Settings.from_env({}, hash_key="k", key_prefix="p").hash_key == "k"


def test_overrides_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="`max_flags`"):
        Settings.from_env({}, max_flags=0)


@pytest.mark.parametrize(
    ("variable", "raw", "kind"),
    [
        ("FLAGMETRICS_BUFFER_CAPACITY", "lots", "int"),
        ("FLAGMETRICS_BUFFER_CAPACITY", "1.5", "int"),
        ("FLAGMETRICS_MAX_FLAGS", "1e3", "int"),
        ("FLAGMETRICS_MAX_VARIANTS_PER_FLAG", "ten", "int"),
        ("FLAGMETRICS_FLUSH_INTERVAL_S", "fast", "float"),
        ("FLAGMETRICS_SCRAPE_TIMEOUT_S", "1s", "float"),
    ],
)
def test_unparsable_variable_names_the_variable(variable: str, raw: str, kind: str) -> None:
    with pytest.raises(ConfigurationError, match=f"`{variable}` must be a {kind}") as info:
        Settings.from_env({variable: raw})
    assert repr(raw) in str(info.value)


def test_out_of_range_variable_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="`flush_interval_s`"):
        Settings.from_env({"FLAGMETRICS_FLUSH_INTERVAL_S": "0"})


def test_nan_variable_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="`scrape_timeout_s`"):
        Settings.from_env({"FLAGMETRICS_SCRAPE_TIMEOUT_S": "nan"})


@pytest.mark.parametrize("value", [0.0, 0.009, 3600.5, float("nan"), float("inf"), -1.0])
def test_invalid_flush_interval(value: float) -> None:
    with pytest.raises(ConfigurationError, match="`flush_interval_s`"):
        Settings(flush_interval_s=value)


@pytest.mark.parametrize("value", [0.01, 3600.0])
def test_flush_interval_bounds_are_accepted(value: float) -> None:
    assert Settings(flush_interval_s=value).flush_interval_s == value


@pytest.mark.parametrize("value", [0.0, 0.005, 60.5, float("nan"), float("inf")])
def test_invalid_scrape_timeout(value: float) -> None:
    with pytest.raises(ConfigurationError, match="`scrape_timeout_s`"):
        Settings(scrape_timeout_s=value)


@pytest.mark.parametrize("value", [0.01, 60.0])
def test_scrape_timeout_bounds_are_accepted(value: float) -> None:
    assert Settings(scrape_timeout_s=value).scrape_timeout_s == value


@pytest.mark.parametrize("name", ["buffer_capacity", "max_flags", "max_variants_per_flag"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5, "10"], ids=["zero", "negative", "bool", "float", "str"])
def test_invalid_whole_number_setting(name: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"`{name}` must be a positive whole number"):
        Settings(**{name: value})


@pytest.mark.parametrize("name", ["buffer_capacity", "max_flags", "max_variants_per_flag"])
def test_whole_number_setting_accepts_one(name: str) -> None:
    assert getattr(Settings().with_(**{name: 1}), name) == 1


@pytest.mark.parametrize("value", ["", "has space", "tab\there", "new\nline"])
def test_invalid_key_prefix(value: str) -> None:
    with pytest.raises(ConfigurationError, match="`key_prefix`"):
        Settings(key_prefix=value)


def test_configuration_error_is_a_value_error_and_a_flagmetrics_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(max_flags=0)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, FlagMetricsError)


def test_settings_validate_themselves_on_construction() -> None:
    """`Settings(...)` refuses an invalid value as the environment path does, naming the setting."""
    with pytest.raises(ConfigurationError, match="`flush_interval_s` must be between"):
        Settings(flush_interval_s=-1)


def test_with_can_clear_an_optional_setting() -> None:
    assert Settings(redis_url="redis://h/0").with_(redis_url=None) == Settings()


def test_with_returns_a_changed_copy() -> None:
    settings = Settings()
    changed = settings.with_(max_flags=3)
    assert (changed.max_flags, settings.max_flags) == (3, 1_000)


def test_with_validates() -> None:
    with pytest.raises(ConfigurationError, match="`buffer_capacity`"):
        Settings().with_(buffer_capacity=0)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().max_flags = 3  # type: ignore[misc]


@pytest.mark.parametrize(("prefix", "expected"), [("", ""), ("myapp", "myapp_"), ("my_app2", "my_app2_")])
def test_metric_prefix_ends_in_an_underscore(prefix: str, expected: str) -> None:
    assert metric_prefix(prefix) == expected


@pytest.mark.parametrize("prefix", ["my-app", "my app", "app.", 3])
def test_metric_prefix_rejects_what_is_not_a_name_naming_the_argument(prefix: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"^`--prefix` must be letters, digits and underscores"):
        metric_prefix(prefix, argument="--prefix")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:s3cret@host/0", "redis://user:***@host/0"),
        ("rediss://host/0?password=s3cret&ssl_ca_certs=/ca.pem", "rediss://host/0?password=***&ssl_ca_certs=/ca.pem"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://:pa/ss?w#rd@host:6379/0", "redis://:***@host:6379/0"),  # unencoded / ? # in the password
        ("unix:///run/redis.sock?password=s3cret&db=1", "unix:///run/redis.sock?password=***&db=1"),
        ("user:s3cret@host:6379", "user:***@host:6379"),  # no scheme: refused, and still redacted
    ],
)
def test_redact_url_hides_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# -- Redis Sentinel -----------------------------------------------------------------------------------------

SENTINEL_PASSWORD = "pw-s3cret-5be1"


def test_sentinel_settings_default_to_none_and_mymaster() -> None:
    settings = Settings()
    assert (settings.redis_sentinel, settings.redis_sentinel_master, settings.redis_sentinel_password) == (
        None,
        "mymaster",
        None,
    )
    assert not settings.uses_redis


def test_from_env_reads_the_sentinel_variables() -> None:
    env = {
        "FLAGMETRICS_REDIS_SENTINEL": "s1:26379,s2:26379",
        "FLAGMETRICS_REDIS_SENTINEL_MASTER": "cache",
        "FLAGMETRICS_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
    }
    settings = Settings.from_env(env)
    assert (settings.redis_sentinel, settings.redis_sentinel_master, settings.redis_sentinel_password) == (
        "s1:26379,s2:26379",
        "cache",
        SENTINEL_PASSWORD,
    )
    assert settings.uses_redis


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s1:26379,s2:26380", SentinelSpec((("s1", 26379), ("s2", 26380)))),
        (" s1 , s2:1 ", SentinelSpec((("s1", SENTINEL_PORT), ("s2", 1)))),
        ("[::1]:26379,[fd00::2]", SentinelSpec((("::1", 26379), ("fd00::2", SENTINEL_PORT)))),
        ("redis://s1:26379,[::1]:26380", SentinelSpec((("s1", 26379), ("::1", 26380)), url=True)),
        (
            f"redis://:{SENTINEL_PASSWORD}@s1:26379,s2:26379/3",
            SentinelSpec((("s1", 26379), ("s2", 26379)), password=SENTINEL_PASSWORD, db=3, url=True),
        ),
        (
            "rediss://app:p%40ss%2Fword@s1/0?ssl_cert_reqs=none",
            SentinelSpec(
                (("s1", SENTINEL_PORT),), "app", "p@ss/word", db=0, ssl=True, query="ssl_cert_reqs=none", url=True
            ),
        ),
        ("redis://app@s1:26379", SentinelSpec((("s1", 26379),), username="app", url=True)),
    ],
    ids=["plain", "spaces-and-default-port", "ipv6", "url", "url-with-password-and-db", "tls-user-query", "user"],
)
def test_parse_sentinel_reads_every_form(text: str, expected: SentinelSpec) -> None:
    assert parse_sentinel(text) == expected
    assert parse_sentinel(text).password == expected.password  # left out of the comparison's repr only


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "`redis_sentinel` names no sentinel"),
        (" , ", "`redis_sentinel` names a bad sentinel address ''"),
        ("s1:26379,,s2:26379", "`redis_sentinel` names a bad sentinel address ''"),
        ("s1:0", "`redis_sentinel` names a bad port '0' for 's1' (1-65535)"),
        ("s1:65536", "`redis_sentinel` names a bad port '65536'"),
        ("s1:port", "`redis_sentinel` names a bad port 'port'"),
        ("s1:-1", "`redis_sentinel` names a bad port '-1'"),
        ("::1:26379", "`redis_sentinel` names a bad sentinel address '::1:26379' (host:port, IPv6 in brackets"),
        ("[::1:26379", "`redis_sentinel` names a bad sentinel address '[::1:26379'"),
        ("[not-ipv6]:26379", "`redis_sentinel` names a bad sentinel address '[not-ipv6]:26379'"),
        ("[::1]26379", "`redis_sentinel` names a bad sentinel address '[::1]26379'"),
        ("s 1:26379", "`redis_sentinel` names a bad sentinel address 's 1:26379'"),
        ("http://s1:26379", "`redis_sentinel` must be sentinels as host:port,host:port or a redis:// or rediss://"),
        ("unix:///run/sentinel.sock", "`redis_sentinel` must be sentinels as host:port,host:port or a redis://"),
        ("redis:///0", "`redis_sentinel` names no sentinel"),
        ("redis://s1:26379/db", "`redis_sentinel` names a bad database, a whole number as in /0"),
        ("redis://s1:26379#x", "`redis_sentinel` holds a '#': percent-encode it as %23"),
        (3, "`redis_sentinel` must be a string"),
    ],
)
def test_invalid_redis_sentinel_names_the_setting(value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings(redis_sentinel=value)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    "value",
    [
        f"redis://:{SENTINEL_PASSWORD}@s1:port/0",
        f"redis://:{SENTINEL_PASSWORD}@s1:26379/zero",
        f"redis://user:{SENTINEL_PASSWORD}@/0",
        f"redis://:{SENTINEL_PASSWORD.replace('-', '/')}@s1:26379/0",
        f"redis://:{SENTINEL_PASSWORD.replace('-', '#')}@s1:26379/0",
        f"http://:{SENTINEL_PASSWORD}@s1:26379",
        f"redis://s1:26379/0?password={SENTINEL_PASSWORD}#",
    ],
    ids=["bad-port", "bad-db", "no-host", "unencoded-slash", "unencoded-hash", "http", "query"],
)
def test_an_invalid_sentinel_url_never_shows_its_password(value: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings(redis_sentinel=value)
    for part in (SENTINEL_PASSWORD, *SENTINEL_PASSWORD.split("-")[1:]):
        assert part not in str(raised.value)


def test_redis_sentinel_with_redis_url_says_which_to_drop() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({"FLAGMETRICS_REDIS_SENTINEL": "s1:26379", "FLAGMETRICS_REDIS_URL": "redis://h:6379/0"})
    assert str(raised.value) == (
        "`redis_sentinel` and `redis_url` name two stores: drop `redis_url` (FLAGMETRICS_REDIS_URL) to reach the "
        "master through its sentinels, or `redis_sentinel` (FLAGMETRICS_REDIS_SENTINEL)"
    )


def test_redis_sentinel_with_redis_cluster_says_to_drop_the_cluster() -> None:
    with pytest.raises(ConfigurationError, match=r"drop `redis_cluster` \(FLAGMETRICS_REDIS_CLUSTER\)$"):
        Settings(redis_sentinel="s1:26379", redis_cluster=True)


@pytest.mark.parametrize("name", ["", "my master", "tab\tname", 3])
def test_invalid_redis_sentinel_master(name: Any) -> None:
    with pytest.raises(ConfigurationError, match="`redis_sentinel_master` must be the master's service name"):
        Settings(redis_sentinel="s1:26379", redis_sentinel_master=name)


def test_a_sentinel_password_without_sentinels_says_what_to_set() -> None:
    with pytest.raises(ConfigurationError, match="`redis_sentinel_password` needs `redis_sentinel`"):
        Settings.from_env({"FLAGMETRICS_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD})


def test_the_sentinel_password_is_left_out_of_the_settings_repr() -> None:
    settings = Settings(redis_sentinel="s1:26379", redis_sentinel_password=SENTINEL_PASSWORD)
    assert SENTINEL_PASSWORD not in repr(settings)
    assert SENTINEL_PASSWORD not in repr(parse_sentinel(f"redis://:{SENTINEL_PASSWORD}@s1"))


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("s1:26379,[::1]:26379", "s1:26379,[::1]:26379"),
        (f"redis://:{SENTINEL_PASSWORD}@s1:26379,s2:26379/0", "redis://:***@s1:26379,s2:26379/0"),
        (f"rediss://app:{SENTINEL_PASSWORD}@s1/0", "rediss://app:***@s1/0"),
        (f"redis://s1/0?password={SENTINEL_PASSWORD}&db=1", "redis://s1/0?password=***&db=1"),
        (f"redis://app:{SENTINEL_PASSWORD.replace('-', '/?')}@s1/0", "redis://app:***@s1/0"),
    ],
)
def test_redact_url_hides_the_masters_password_in_the_sentinel_setting(text: str, shown: str) -> None:
    assert redact_url(text) == shown


def test_the_settings_repr_shows_no_secret() -> None:
    """Token, hash key and the passwords inside either Redis setting are hidden; the rest is shown."""
    secret = "hunter2-secret"
    for settings in (
        Settings(redis_url=f"redis://:{secret}@cache:6379/0", metrics_token=secret, hash_key=secret),
        Settings(redis_sentinel=f"redis://:{secret}@s1:26379,s2:26379/0", redis_sentinel_password=secret),
    ):
        shown = repr(settings)
        assert secret not in shown
        assert shown.startswith("Settings(")
        assert "key_prefix='flagmetrics'" in shown
    assert "redis_url='redis://:***@cache:6379/0'" in repr(Settings(redis_url=f"redis://:{secret}@cache:6379/0"))
    assert "metrics_token='***'" in repr(Settings(metrics_token=secret))
    assert "metrics_token=None" in repr(Settings())
