import pytest
from pydantic import ValidationError

from musicedit.settings import Settings, get_settings, hash_api_key


def test_defaults_and_embedded_urls(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.effective_broker_url == f"sqla+sqlite:///{tmp_path.resolve()}/broker.sqlite"
    assert settings.effective_job_store_url == f"sqlite:///{tmp_path.resolve()}/jobs.sqlite"
    assert settings.storage_backend == "local" and settings.stems == ["Drums", "Bass", "Piano",
                                                                       "Guitar"]
    assert settings.presign_expiry_seconds == 300 and settings.max_attempts == 3


def test_environment_variables(monkeypatch):
    monkeypatch.setenv("MUSICEDIT_PORT", "9000")
    monkeypatch.setenv("MUSICEDIT_API_KEYS", "alice:s3cret, bob:other")
    monkeypatch.setenv("MUSICEDIT_STEMS", "drums,vocals")
    monkeypatch.setenv("MUSICEDIT_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("MUSICEDIT_S3_PATH_STYLE", "true")
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert settings.port == 9000 and settings.s3_path_style
        assert settings.stems == ["Drums", "Vocals"]
        assert settings.cors_origins == ["https://a.example", "https://b.example"]
        assert [k.name for k in settings.api_keys] == ["alice", "bob"]
        assert get_settings() is settings
    finally:
        get_settings.cache_clear()


def test_api_keys_are_kept_only_as_hashes():
    settings = Settings(api_keys="alice:s3cret")
    assert settings.api_keys[0].secret_sha256 == hash_api_key("s3cret")
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())
    assert settings.authenticate("s3cret").name == "alice"
    assert settings.authenticate("s3cre") is None


@pytest.mark.parametrize("value", ["alice", "alice:", ":secret", "a:x,a:y"])
def test_malformed_api_keys_are_refused(value):
    with pytest.raises(ValidationError):
        Settings(api_keys=value)


def test_every_setting_is_read_by_the_code():
    """A setting nobody reads is a promise the README cannot keep (as `worker_concurrency` was)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = "".join(path.read_text() for package in ("musicedit", "service", "worker", "models")
                   for path in (root / package).rglob("*.py"))
    unread = [name for name in Settings.model_fields if not re.search(rf"\.{name}\b", code)]
    assert unread == []
