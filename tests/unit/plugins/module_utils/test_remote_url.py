"""Remote URL grammar: round trips, normalisation, redaction and every rejection."""

import json

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils._remote_url import (
    Credentials,
    RemoteUrlError,
    parse,
    redact_url,
)

NUL = "\0"

# canonical URL -> expected fields (credentials as (user, password) or None)
ROUND_TRIPS = [
    ("file:///srv/backups", dict(type="file", path="/srv/backups", options={})),
    ("file:///", dict(type="file", path="/")),
    ("file:///mnt/b?useVhdDirectory=true", dict(type="file", path="/mnt/b", options={"useVhdDirectory": True})),
    (
        "nfs://nas.example.com:/export/backups",
        dict(type="nfs", host="nas.example.com", port=None, path="/export/backups"),
    ),
    ("nfs://10.0.0.5:2049:/export", dict(type="nfs", host="10.0.0.5", port=2049, path="/export")),
    ("nfs://[fd00::5]:/export", dict(type="nfs", host="[fd00::5]", path="/export")),
    (
        "nfs://nas:/e?useVhdDirectory=true&allowUnauthorized=false",
        dict(options={"useVhdDirectory": True, "allowUnauthorized": False}),
    ),
    (
        "smb://backup:s3cr%t@WORKGROUP\\\\filer\\backups" + NUL,
        dict(type="smb", domain="WORKGROUP", host="filer", share="backups", path="", creds=("backup", "s3cr%t")),
    ),
    (
        "smb://u:p@ss:w@CORP\\\\filer\\share" + NUL + "xo\\prod",
        dict(type="smb", host="filer", share="share", path="xo/prod", creds=("u", "p@ss:w")),
    ),
    ("smb://CORP\\\\filer\\share" + NUL + "sub", dict(type="smb", path="sub", creds=None)),
    (
        "smb://u:p@CORP\\\\filer\\share" + NUL + "0ld?useVhdDirectory=true",
        dict(path="0ld", options={"useVhdDirectory": True}),
    ),
    (
        "s3://AKIAEXAMPLE:wJalr%2FK7%2BMDENG@s3.eu-west-1.amazonaws.com/bucket/xo/prod?useVhdDirectory=true#eu-west-1",
        dict(
            type="s3",
            protocol="https",
            host="s3.eu-west-1.amazonaws.com",
            port=None,
            bucket="bucket",
            path="xo/prod",
            region="eu-west-1",
            creds=("AKIAEXAMPLE", "wJalr/K7+MDENG"),
        ),
    ),
    (
        "s3+http://minio:minio123@127.0.0.1:9000/b",
        dict(protocol="http", host="127.0.0.1", port=9000, bucket="b", path=""),
    ),
    ("s3://host.example/bucket", dict(bucket="bucket", creds=None)),
    (
        "file:///b?encryptionKey=%22abcdefghijklmnopqrstuvwxyz012345%22&useVhdDirectory=true",
        dict(options={"encryptionKey": "abcdefghijklmnopqrstuvwxyz012345", "useVhdDirectory": True}),
    ),
    ("file:///b?retries=3&name=%22caf%C3%A9%22", dict(options={"retries": 3, "name": "café"})),
]


@pytest.mark.parametrize(("url", "fields"), ROUND_TRIPS, ids=[u.replace(NUL, "<NUL>") for u, _ in ROUND_TRIPS])
def test_round_trip(url, fields):
    remote = parse(url)
    assert remote.format() == url
    assert parse(remote.format()) == remote
    for key, value in fields.items():
        if key == "creds":
            assert (remote.credentials and (remote.credentials.username, remote.credentials.password)) == (
                value or None
            )
        else:
            assert getattr(remote, key) == value, key


# non-canonical spellings XO also accepts -> what we write back
NORMALISED = [
    ("file:///srv//backups/./", "file:///srv/backups"),
    ("file:///srv/backups/?useVhdDirectory=", "file:///srv/backups?useVhdDirectory=false"),  # XO: '' is false
    ("nfs://nas:/export/b/", "nfs://nas:/export/b"),
    ("smb://u:p@D\\\\srv\\share\\a\\b", "smb://u:p@D\\\\srv\\share" + NUL + "a\\b"),  # no NUL: sub after share
    ("smb://u:p@D\\\\srv\\share", "smb://u:p@D\\\\srv\\share" + NUL),
    ("smb://u@D\\\\srv\\share" + NUL, "smb://u:@D\\\\srv\\share" + NUL),
    ("s3://k:s@h/bucket/pre//fix/", "s3://k:s@h/bucket/pre/fix"),
]


@pytest.mark.parametrize(("url", "canonical"), NORMALISED)
def test_normalised(url, canonical):
    assert parse(url).format() == canonical


REJECTED = [
    ("", "is not a remote URL"),
    ("/srv/backups", "is not a remote URL: write scheme://"),
    ("ftp://host/x", "unknown remote scheme 'ftp'"),
    ("FILE:///x", "unknown remote scheme 'FILE'"),
    ("azure://acct:key@host/c", "Azure remotes are not supported"),
    ("file://srv/backups", "is relative: file URLs need an absolute path with three slashes, e.g. file:///srv/backups"),
    ("file://", "is relative"),
    ("file:///srv/../etc", "contains '..'"),
    ("file:///srv/backups/xo-vm-backups", "ends in xo-vm-backups: point it at the directory that contains"),
    ("file:///srv/xo-vm-backups/", "for example file:///srv"),
    ("file:///xo-vm-backups", "for example file:///)"),
    ("nfs://nas:export", "must be absolute: write nfs://nas:/export"),
    ("nfs://nas:", "must be absolute"),
    ("nfs://nas/export", "cannot read NFS URL"),
    ("nfs://user@nas:/export", "cannot read NFS URL"),
    ("nfs://nas:99999:/e", "out of range"),
    ("nfs://nas:/a/../../etc", "contains '..'"),
    ("nfs://nas:/export/xo-vm-backups", "ends in xo-vm-backups"),
    ("smb://u:p@\\\\srv\\share", "no domain before \\\\server: write WORKGROUP"),
    ("smb://u:p@D\\\\srv", "names no share after the server"),
    ("smb://u:p@D\\\\srv\\", "names no share"),
    ("smb://u:p@D\\srv\\share", "cannot read SMB URL"),
    ("smb://u:p@D\\\\srv\\share\\0sub", "backslash followed by 0"),
    ("smb://:p@D\\\\srv\\share", "no user name"),
    ("smb://u:p@D\\\\srv\\share" + NUL + "a\\..\\..\\x", "contains '..'"),
    ("smb://u:p@D\\\\srv\\xo-vm-backups", "ends in xo-vm-backups"),
    ("smb://u:p@D\\\\srv\\share" + NUL + "xo-vm-backups", "ends in xo-vm-backups"),
    ("s3://k:s@host", "names no bucket"),
    ("s3://k:s@host/", "names no bucket"),
    ("s3://k:s@host//", "names no bucket"),
    ("s3://ks@host/b", "KEY:SECRET@"),
    ("s3://k:s@host:0/b", "out of range"),
    ("s3://k:s@/b", "cannot read the S3 endpoint"),
    ("s3://k:s@host/b/../c", "contains '..'"),
    ("s3://k:s@host/bucket/xo-vm-backups", "ends in xo-vm-backups"),
    ("file:///b?useVhdDirectory=yes", "option 'useVhdDirectory' has value 'yes', which is not JSON"),
    ("file:///b?encryptionKey=plaintextsecret", "option 'encryptionKey' has value ***"),
    ("file:///b?a=1&a=2", "option 'a' is given twice"),
]


@pytest.mark.parametrize(("url", "message"), REJECTED, ids=[u.replace(NUL, "<NUL>") or "empty" for u, _ in REJECTED])
def test_rejected(url, message):
    with pytest.raises(RemoteUrlError) as info:
        parse(url)
    text = str(info.value)
    assert message in text
    assert text.endswith(".")  # one finished sentence
    assert "plaintextsecret" not in text


def test_rejection_messages_never_show_passwords():
    for url in ("smb://admin:hunter2@D\\\\srv", "s3://AKIA:hunter2@/b", "ftp://admin:hunter2@host/x", "hunter2"):
        with pytest.raises(RemoteUrlError) as info:
            parse("ftp://admin:hunter2@host/x" if url == "hunter2" else url)
        assert "hunter2" not in str(info.value)


REDACTED = [
    (
        "smb://backup:Pa55@WORKGROUP\\\\filer\\share" + NUL + "xo\\prod",
        "smb://backup:***@WORKGROUP\\\\filer\\share\\xo\\prod",
    ),
    ("smb://backup:Pa55@WORKGROUP\\\\filer\\share" + NUL, "smb://backup:***@WORKGROUP\\\\filer\\share"),
    ("s3://AKIA:wJ%2Fsecret@s3.example.com/b/p#eu", "s3://AKIA:***@s3.example.com/b/p#eu"),
    (
        "file:///b?encryptionKey=%22k3y%22&useVhdDirectory=true",
        "file:///b?encryptionKey=%22***%22&useVhdDirectory=true",
    ),
    ("nfs://nas:/e", "nfs://nas:/e"),
]


@pytest.mark.parametrize(("url", "shown"), REDACTED)
def test_redacted(url, shown):
    remote = parse(url)
    assert remote.redacted() == shown
    assert str(remote) == shown and repr(remote) == f"RemoteUrl({shown!r})"
    for secret in ("Pa55", "wJ%2Fsecret", "wJ/secret", "k3y"):
        assert secret not in remote.redacted()
        assert secret not in repr(remote)
        assert secret not in json.dumps(remote.to_dict())
        assert secret not in repr(remote.credentials)
    # the display form parses back to the same remote, minus the secrets
    again = parse(shown)
    assert (again.type, again.path, again.host) == (remote.type, remote.path, remote.host)


def test_credentials_are_separable():
    remote = parse("smb://backup:Pa55@WORKGROUP\\\\filer\\share" + NUL + "xo")
    assert remote.credentials == Credentials("backup", "Pa55")
    bare = remote.without_credentials()
    assert bare.credentials is None
    assert bare.format() == "smb://WORKGROUP\\\\filer\\share" + NUL + "xo"
    assert remote.format(include_credentials=False) == bare.format()
    other = bare.with_credentials(Credentials("svc", "x:y@z"))
    assert parse(other.format()).credentials == Credentials("svc", "x:y@z")
    s3 = parse("s3://host/bucket").with_credentials(Credentials("AK/IA", "s e:c@r#et"))
    assert s3.format() == "s3://AK%2FIA:s%20e%3Ac%40r%23et@host/bucket"
    assert parse(s3.format()).credentials == Credentials("AK/IA", "s e:c@r#et")


def test_to_dict_describes_without_secrets():
    remote = parse("s3://AKIA:topsecret@minio:9000/b/pre?useVhdDirectory=true&encryptionKey=%22k%22#us-east-1")
    assert remote.to_dict() == {
        "type": "s3",
        "url": "s3://AKIA:***@minio:9000/b/pre?useVhdDirectory=true&encryptionKey=%22***%22#us-east-1",
        "path": "pre",
        "host": "minio",
        "port": 9000,
        "bucket": "b",
        "region": "us-east-1",
        "protocol": "https",
        "username": "AKIA",
        "options": {"useVhdDirectory": True, "encryptionKey": "***"},
    }


def test_redact_url_handles_garbage():
    assert "hunter2" not in redact_url("smb://admin:hunter2@nowhere")
    assert redact_url("file:///srv") == "file:///srv"
