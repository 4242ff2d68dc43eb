#!/usr/bin/env bash
# Regenerates the development certificates: a private CA and a certificate for localhost, demo.localhost,
# *.demo.localhost, *.localhost (curl and browsers refuse a wildcard directly under a top-level name), 127.0.0.1
# and ::1 that it signs. ECDSA P-256 throughout (the fastest handshakes with OpenSSL 3). Development only: the CA
# key is in the repository, so never trust this CA beyond your own machine's tests.
#
#   Certs/generate.sh          # writes Certs/dev-ca.pem, dev-ca.key, localhost.pem (leaf + CA), localhost.key
set -euo pipefail
cd "$(dirname "$0")"
days=3650

openssl ecparam -name prime256v1 -genkey -noout -out dev-ca.key
openssl req -x509 -new -key dev-ca.key -sha256 -days "$days" -subj "/CN=Switchyard development CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out dev-ca.pem

openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out localhost.key
openssl req -new -key localhost.key -subj "/CN=localhost" -out localhost.csr
cat > localhost.ext <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:demo.localhost,DNS:*.demo.localhost,DNS:*.localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in localhost.csr -CA dev-ca.pem -CAkey dev-ca.key -CAcreateserial -sha256 -days "$days" \
    -extfile localhost.ext -out localhost.leaf.pem
cat localhost.leaf.pem dev-ca.pem > localhost.pem
rm -f localhost.csr localhost.ext localhost.leaf.pem dev-ca.srl
echo "wrote $(pwd)/dev-ca.pem, localhost.pem and localhost.key"
