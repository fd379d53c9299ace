#!/usr/bin/env bash
# Checks a built warren .deb (scripts/package-deb.sh runs this): the file list holds the
# binaries, the unit, the config, completions and a man page per verb; /etc/warren/warren.toml
# is a conffile; the maintainer scripts create the user and enable the unit.
set -euo pipefail
deb=$1
fail() { echo "FAIL: $deb: $*" >&2; exit 1; }
files=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|')
for path in /usr/bin/warren /usr/lib/warren/bin/ansible-runner \
    /usr/lib/systemd/system/warren.service /etc/warren/warren.toml \
    /usr/share/bash-completion/completions/warren /usr/share/zsh/vendor-completions/_warren \
    /usr/share/fish/vendor_completions.d/warren.fish; do
    grep -qx "$path" <<<"$files" || fail "no $path"
done
grep -q '^/usr/bin/ansible-runner$' <<<"$files" && fail "the front end would shadow ansible-runner"
for verb in node keygen status ping traceroute run component work completions man; do
    grep -Eq "^/usr/share/man/man1/warren-$verb\.1(\.gz)?$" <<<"$files" || fail "no man page for $verb"
done
ctrl=$(mktemp -d)
trap 'rm -rf "$ctrl"' EXIT
dpkg-deb -e "$deb" "$ctrl"
grep -qx /etc/warren/warren.toml "$ctrl/conffiles" || fail "warren.toml is not a conffile"
grep -q 'useradd --system' "$ctrl/postinst" || fail "postinst creates no warren user"
grep -q 'warren keygen --out /etc/warren/node.key' "$ctrl/postinst" || fail "postinst makes no key"
grep -q 'deb-systemd-helper.*enable.*warren.service' "$ctrl/postinst" \
    || grep -q 'enable' "$ctrl/postinst" || fail "postinst does not enable warren.service"
grep -q '#DEBHELPER#' "$ctrl/postinst" && fail "postinst still has #DEBHELPER#"
echo "OK: $deb holds the binaries, unit, config, completions and man pages" >&2
