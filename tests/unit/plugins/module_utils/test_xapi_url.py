import urllib.parse

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils._xapi_url import (
    XapiUrl,
    XapiUrlError,
    handler_url,
    parse_xapi_url,
    redact_secrets,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("xcp1", "https://xcp1"),
        ("xcp1.example.org:8443", "https://xcp1.example.org:8443"),
        ("  192.0.2.10  ", "https://192.0.2.10"),
        ("https://xcp1/", "https://xcp1"),
        ("HTTPS://XCP1:443", "https://xcp1:443"),
        ("http://xcp1", "http://xcp1"),
        ("http://xcp1:80", "http://xcp1:80"),
        ("[2001:db8::5]:8443", "https://[2001:db8::5]:8443"),
        ("https://[2001:db8::5]", "https://[2001:db8::5]"),
    ],
)
def test_parse_defaults_to_https_and_keeps_explicit_http(given, expected):
    assert parse_xapi_url(given).url == expected


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("", "hostname is empty"),
        ("ftp://xcp1", "uses the scheme ftp://"),
        ("https://xcp1/some/path", "has a path or query"),
        ("https://xcp1?x=1", "has a path or query"),
        ("xcp1:99999", "not a valid host[:port]"),
        ("xcp1:port", "not a valid host[:port]"),
        ("https://", "has no host part"),
    ],
)
def test_parse_rejects_bad_hostnames_with_a_hint(given, fragment):
    with pytest.raises(XapiUrlError, match=None) as info:
        parse_xapi_url(given)
    assert fragment in str(info.value)


def test_credentials_in_hostname_are_refused_without_echoing_them():
    with pytest.raises(XapiUrlError) as info:
        parse_xapi_url("https://root:S3cret-pw@xcp1")
    assert "S3cret-pw" not in str(info.value)
    assert "username and password options" in str(info.value)


def test_with_host_keeps_scheme_and_port():
    url = parse_xapi_url("http://127.0.0.2:8080")
    master = url.with_host("127.0.0.1")
    assert master.url == "http://127.0.0.1:8080"
    assert url.with_host("2001:db8::1").url == "http://[2001:db8::1]:8080"
    assert url.with_host("[2001:db8::1]").url == "http://[2001:db8::1]:8080"
    assert parse_xapi_url("xcp-b").with_host("xcp-a").url == "https://xcp-a"
    with pytest.raises(XapiUrlError):
        url.with_host("  ")


def test_urls_compare_by_value():
    assert parse_xapi_url("xcp1") == XapiUrl("https", "xcp1")
    assert parse_xapi_url("xcp1") != parse_xapi_url("http://xcp1")
    assert len({parse_xapi_url("xcp1"), parse_xapi_url("https://xcp1/")}) == 1


def test_handler_url_carries_the_session_but_never_shows_it():
    session = "OpaqueRef:5e1a1f6e-0b7d-4d0b-9a57-6b1d2c3e4f50"
    url = handler_url(parse_xapi_url("xcp1:8443"), "/export", session, uuid="abc", use_compression="zstd", task_id=None)
    parts = urllib.parse.urlsplit(url.url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "xcp1:8443", "/export")
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert query == {"uuid": "abc", "use_compression": "zstd", "session_id": session}
    for shown in (str(url), repr(url), f"{url}", "%s" % (url,)):  # noqa: UP031 - the %-form is what logging uses
        assert session not in shown
        assert "session_id=***" in shown
        assert "uuid=abc" in shown


def test_handler_url_spells_booleans_as_xapi_expects():
    url = handler_url(XapiUrl("https", "h"), "export_raw_vdi", "s", preserve_power_state=True, all=False)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url.url).query))
    assert query["preserve_power_state"] == "true" and query["all"] == "false"
    assert url.path == "/export_raw_vdi"


def test_handler_url_redacts_error_texts_that_quote_it():
    session = "OpaqueRef:0f9c"
    url = handler_url(XapiUrl("https", "h"), "/import", session, sr_id="OpaqueRef:sr")
    error = f"HTTPSConnectionPool(host='h', port=443): Max retries exceeded with url: {url.url[len('https://h') :]}"
    assert session not in url.redact(error)
    assert urllib.parse.quote(session, safe="") not in url.redact(error)
    assert "sr_id=OpaqueRef%3Asr" in url.redact(error)


def test_redact_secrets_masks_values_and_their_url_encoding():
    text = "login pw=p@ss:word url?session_id=OpaqueRef:1&x=1 enc=p%40ss%3Aword"
    out = redact_secrets(text, ["p@ss:word", None, ""])
    assert "p@ss:word" not in out and "p%40ss%3Aword" not in out
    assert "session_id=***&x=1" in out
