#!/bin/sh
# Routing for lifeline's transparent source (upstream.source_address "client").
#
#   transparent-routing.sh up [MARK]     install the rules (again: no duplicates)
#   transparent-routing.sh down [MARK]   remove them
#   transparent-routing.sh status [MARK] show them; exit 1 if any is missing
#
# With "client", lifeline connects to the server from the client's own address.
# The server's replies go to that address, and must reach lifeline's socket
# instead of the client. Run this, as root, in the network namespace
# lifeline runs in, for either deployment:
#
# - gateway: lifeline's host routes between clients and the server (the
#   server's route to client addresses goes through it). A reply arrives on
#   an interface, addressed to a client: the nftables rule finds lifeline's
#   transparent socket for it and marks the packet MARK.
# - sidecar: lifeline and the server share one host or network namespace (a
#   Kubernetes pod). A reply is sent locally, addressed to a client, and would
#   leave the host: lifeline's upstream connections carry MARK
#   (upstream.mark in lifeline's configuration, which must equal MARK here),
#   conntrack remembers it, and the server's replies on those connections get
#   it back.
#
# Either way, the policy rule sends packets marked MARK to routing table
# TABLE, whose only route delivers every address locally; the kernel then
# hands them to lifeline's socket. IPv4 and IPv6 alike.
#
# MARK defaults to 0x4c4c (19532); TABLE to $LIFELINE_ROUTE_TABLE or 19532;
# the rule's priority to $LIFELINE_RULE_PRIORITY or 19532. Both deployments
# need CAP_NET_ADMIN for lifeline itself (IP_TRANSPARENT, SO_MARK).
set -eu

usage() {
    echo "usage: $0 up|down|status [MARK]" >&2
    exit 2
}

[ $# -ge 1 ] && [ $# -le 2 ] || usage
action=$1
given=${2:-0x4c4c}
# A decimal number without a leading zero, or 0x and hex digits; 1 to 2^32-1.
case $given in
    0x[0-9a-fA-F]* | [1-9]*) ;;
    *) given=bad ;;
esac
case $given in
    0x*[!0-9a-fA-F]* | [1-9]*[!0-9]*) given=bad ;;
esac
MARK=$(printf '%u' "$given" 2>/dev/null) || MARK=0
if [ "$given" = bad ] || [ ${#MARK} -gt 10 ] || [ "$MARK" -lt 1 ] || [ "$MARK" -gt 4294967295 ]; then
    echo "$0: MARK must be a number from 1 to 4294967295 (decimal, or hex with 0x), got '${2:-}'" >&2
    exit 2
fi
TABLE=${LIFELINE_ROUTE_TABLE:-19532}
PRIORITY=${LIFELINE_RULE_PRIORITY:-19532}
NFT_TABLE=lifeline_transparent
# A table of our own: never main (254), local (255), default (253) or 0,
# whose routes `down` would flush. A priority between the local rule (0)
# and the main one (32766).
case $TABLE in '' | 0* | *[!0-9]*) TABLE=bad ;; esac
if [ "$TABLE" = bad ] || [ ${#TABLE} -gt 10 ] || [ "$TABLE" -gt 4294967295 ] ||
    { [ "$TABLE" -ge 253 ] && [ "$TABLE" -le 255 ]; }; then
    echo "$0: LIFELINE_ROUTE_TABLE must be a number from 1 to 252 or 256 to 4294967295," \
        "got '${LIFELINE_ROUTE_TABLE:-}'" >&2
    exit 2
fi
case $PRIORITY in '' | 0* | *[!0-9]*) PRIORITY=bad ;; esac
if [ "$PRIORITY" = bad ] || [ ${#PRIORITY} -gt 5 ] || [ "$PRIORITY" -gt 32765 ]; then
    echo "$0: LIFELINE_RULE_PRIORITY must be a number from 1 to 32765," \
        "got '${LIFELINE_RULE_PRIORITY:-}'" >&2
    exit 2
fi

for tool in ip nft; do
    command -v $tool >/dev/null || { echo "$0: $tool is not installed" >&2; exit 1; }
done

rule_present() { # FAMILY
    [ -n "$(ip "$1" rule show priority "$PRIORITY" fwmark "$MARK" lookup "$TABLE" 2>/dev/null)" ]
}

# Any rule of ours, whatever its mark (an `up` with another MARK).
any_rule() { # FAMILY
    [ -n "$(ip "$1" rule show priority "$PRIORITY" lookup "$TABLE" 2>/dev/null)" ]
}

# Our rules whose mark is not MARK (left by an `up` with another MARK).
other_marks() { # FAMILY
    ip "$1" rule show priority "$PRIORITY" lookup "$TABLE" 2>/dev/null |
        sed -n 's/.*fwmark \(0x[0-9a-f]*\).*/\1/p' | while read -r m; do
        [ "$(printf '%u' "$m")" = "$MARK" ] || echo "$m"
    done
}

# IPv6 only where the namespace has it (a host booted with ipv6.disable=1,
# or a namespace with disable_ipv6 set on lo, has no IPv6 routes to add).
families() {
    if [ -r /proc/net/if_inet6 ] && [ "$(cat /proc/sys/net/ipv6/conf/lo/disable_ipv6 2>/dev/null || echo 0)" = 0 ]; then
        echo "-4 -6"
    else
        echo "-4"
    fi
}

up() {
    for f in $(families); do
        # Packets marked MARK: every destination is local.
        rule_present $f || ip $f rule add priority "$PRIORITY" fwmark "$MARK" lookup "$TABLE"
        for m in $(other_marks $f); do
            ip $f rule del priority "$PRIORITY" fwmark "$m" lookup "$TABLE"
        done
        ip $f route replace local default dev lo table "$TABLE"
    done
    # Replaced whole in one transaction (nft -f applies a file atomically):
    # at no moment are the rules missing, and `up` again leaves one copy.
    nft -f - <<EOF
table inet $NFT_TABLE {}
delete table inet $NFT_TABLE
table inet $NFT_TABLE {
    chain prerouting {
        type filter hook prerouting priority mangle; policy accept;
        # gateway: a reply addressed to a client, for lifeline's transparent socket
        meta l4proto tcp socket transparent 1 meta mark set $MARK
    }
    chain output {
        type route hook output priority mangle; policy accept;
        # sidecar: lifeline's upstream packets (upstream.mark) mark their connection
        meta mark $MARK ct mark set meta mark
        # sidecar: the server's replies on it are routed back to lifeline
        ct mark $MARK meta mark set ct mark
    }
}
EOF
}

down() {
    for f in -4 -6; do  # both: IPv6 may have been turned off since `up`
        while any_rule $f; do
            ip $f rule del priority "$PRIORITY" lookup "$TABLE"
        done
        ip $f route flush table "$TABLE" 2>/dev/null || true
    done
    nft delete table inet $NFT_TABLE 2>/dev/null || true
}

# Prints what is installed; exit 1 when any part for MARK is missing.
status() {
    missing=0
    for f in $(families); do
        ip $f rule show priority "$PRIORITY" lookup "$TABLE" 2>/dev/null || true
        rule_present $f || { echo "missing: ip $f rule fwmark $MARK lookup $TABLE"; missing=1; }
        routes=$(ip $f route show table "$TABLE" 2>/dev/null) || routes=
        [ -n "$routes" ] && echo "$routes" || { echo "missing: ip $f route table $TABLE"; missing=1; }
    done
    if rules=$(nft list table inet $NFT_TABLE 2>/dev/null); then
        echo "$rules"
        echo "$rules" | grep -q "meta mark set $(printf '0x%08x' "$MARK")" ||
            { echo "missing: nftables rules for mark $MARK"; missing=1; }
    else
        echo "missing: nftables table inet $NFT_TABLE"
        missing=1
    fi
    return $missing
}

case $action in
    up) up ;;
    down) down ;;
    status) status ;;
    *) usage ;;
esac
