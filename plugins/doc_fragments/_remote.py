"""Options that name backup remotes (``backup``, ``backup_info``, ``restore``)."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  remote_username:
    description:
      - User name for remotes whose URL carries none (SMB user, S3 access key id).
      - Applies to every remote given by URL; a remote registered with M(xapi.proxy.remote) uses its own
        stored credentials.
      - Credentials written inside a URL still work, but are never shown in results.
    type: str
  remote_password:
    description:
      - Password for remotes whose URL carries none (SMB password, S3 secret access key).
    type: str
  remote_ca_path:
    description:
      - PEM file of the certificate authority that signed the certificate of an S3 server reached over
        HTTPS (V(s3://)), for object stores with a private CA. Other remote kinds ignore it.
      - Without it the system's trusted CAs are used; C(?allowUnauthorized=true) in the URL skips
        verification altogether, as in Xen Orchestra.
    type: path
  remotes_dir:
    description:
      - Directory holding remotes registered with M(xapi.proxy.remote) on the host running the module,
        where a remote name is looked up.
    type: path
    default: /etc/xapi-proxy/remotes
notes:
  - Remote URLs follow Xen Orchestra's grammar, for example V(file:///srv/backups),
    V(nfs://nas.example.org:/export/backups), V(smb://backup@EXAMPLE\\\\nas\\share\\0xcp),
    V(s3://s3.example.org/bucket/prefix#eu-west-1).
"""
