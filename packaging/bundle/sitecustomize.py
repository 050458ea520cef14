"""Run at every start of the bundled interpreter (site.py imports it).

The bundle's OpenSSL looks for trusted CAs where Debian keeps them (/usr/lib/ssl), which
no dom0 has. Point it at dom0's own CA bundle, the administrator's trust store, unless
the environment already names one.
"""

import os

for _bundle in ("/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/certs/ca-certificates.crt"):
    if os.path.isfile(_bundle):
        os.environ.setdefault("SSL_CERT_FILE", _bundle)
        break
