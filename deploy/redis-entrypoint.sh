#!/bin/sh
# Starts Redis with the ACL users of redis-users.acl and the password from $REDIS_PASSWORD (a
# secret: compose's env file, Kubernetes' redis-auth Secret). Extra arguments go to redis-server.
#
#   REDIS_PASSWORD       the `wf` user's password (required, at least 16 characters)
#   KEDA_PASSWORD        the `keda` user's password (optional, at least 16 characters; without
#                        it the ACL file has no `keda` user)
#   REDIS_CONF           default /usr/local/etc/redis/redis.conf
#   REDIS_ACL_TEMPLATE   default /usr/local/etc/redis/redis-users.acl
#   REDIS_ACL_FILE       the file written and passed as --aclfile; default /tmp/redis-users.acl
set -eu

conf=${REDIS_CONF:-/usr/local/etc/redis/redis.conf}
template=${REDIS_ACL_TEMPLATE:-/usr/local/etc/redis/redis-users.acl}
acl_file=${REDIS_ACL_FILE:-/tmp/redis-users.acl}

password=${REDIS_PASSWORD:-}
if [ ${#password} -lt 16 ] || [ "$password" = "REPLACE-WITH-A-GENERATED-PASSWORD" ]; then
    echo "redis-entrypoint: set REDIS_PASSWORD to a generated password of 16 characters or more" >&2
    exit 1
fi
hash=$(printf '%s' "$password" | sha256sum | cut -d ' ' -f 1)
unset password REDIS_PASSWORD

keda=${KEDA_PASSWORD:-}
if [ -z "$keda" ]; then
    keda_rule='/@KEDA_PASSWORD_SHA256@/d'
elif [ ${#keda} -lt 16 ] || [ "$keda" = "REPLACE-WITH-A-GENERATED-PASSWORD" ]; then
    echo "redis-entrypoint: KEDA_PASSWORD must be a generated password of 16 characters or more" >&2
    exit 1
else
    keda_rule="s/@KEDA_PASSWORD_SHA256@/$(printf '%s' "$keda" | sha256sum | cut -d ' ' -f 1)/"
fi
unset keda KEDA_PASSWORD

# ACL files take no comments: the template's comment and blank lines are dropped.
umask 077
sed -e '/^[[:space:]]*#/d' -e '/^[[:space:]]*$/d' -e "s/@WF_PASSWORD_SHA256@/$hash/" \
    -e "$keda_rule" "$template" > "$acl_file"
exec redis-server "$conf" --aclfile "$acl_file" "$@"
