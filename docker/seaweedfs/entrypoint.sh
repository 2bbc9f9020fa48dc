#!/bin/sh
# One SeaweedFS server (master, volume, filer, S3 gateway on 8333) with its data
# under /data, telemetry off, one S3 identity from $AWS_ACCESS_KEY_ID and
# $AWS_SECRET_ACCESS_KEY, and the bucket $CAST_S3_BUCKET made once it answers.
set -eu
: "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}" "${CAST_S3_BUCKET:?}"
mkdir -p /data/master /data/volume /data/filer /data/logs
umask 077
cat > /data/s3.json <<JSON
{"identities": [{"name": "cast",
  "credentials": [{"accessKey": "$AWS_ACCESS_KEY_ID", "secretKey": "$AWS_SECRET_ACCESS_KEY"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
JSON
(
    until echo "s3.bucket.create -name $CAST_S3_BUCKET" | weed shell -master=127.0.0.1:9333 2>/dev/null \
            | grep -qv "error"; do
        sleep 1
    done
) &
exec weed -logdir=/data/logs server -ip=127.0.0.1 -ip.bind=0.0.0.0 \
    -dir=/data/volume -master.dir=/data/master -filer -s3 -s3.port=8333 \
    -s3.config=/data/s3.json -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.telemetry=false -master.volumeSizeLimitMB=1024 -volume.max=0
