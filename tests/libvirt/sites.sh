# shellcheck shell=bash
# Two libvirt "sites" on one machine, for tests that move libvirt-managed
# guests between hosts. Source it; it needs root.
#
#   site a: network, mount and UTS namespaces, hostname site-a, 10.77.0.1/24
#   site b: the same, hostname site-b, 10.77.0.2/24
#   one veth pair (lv0 in each) joins them: the "WAN"
#
# Each site runs its own virtlogd and libvirtd over private /run,
# /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt, /etc/libvirt and
# /etc/hosts, all bind-mounted from $LV_T/SITE/ so that the host (and a
# failed run's leftovers) can read them: the console of a guest that ran at
# site a is $LV_T/a/log/qemu/NAME.console. The mount and UTS namespaces are
# bound to files in $LV_T/ns, the network namespaces are ip netns ones.
#
# Reaching a site's libvirtd:
#   from the host:       site_uri SITE (qemu+unix, the socket in $LV_T/SITE/run)
#   from the other site: site_tcp_uri SITE (qemu+tcp://site-SITE/system),
#                        for p2p migration.
#     auth none over plain TCP: acceptable only because the address lives
#     on a veth that nothing but the two test namespaces can reach. qemu+ssh
#     would need sshd and keys in every site for no gain in a test; TLS
#     would need a CA; real deployments use either of those.
#
#   sites_up                  build both sites, start their daemons
#   sites_down                tear everything down: kill every process in the
#                             sites' network namespaces, unmount, remove (also
#                             on a half-way failure: sites_up hooks it into
#                             the EXIT trap, ahead of any trap already there:
#                             set your own, e.g. lib.sh's, before sites_up)
#   site_exec SITE CMD...     run CMD inside a site (sites_down ends it too)
#   site_virsh SITE ARGS...   virsh against a site's libvirtd, from the host
#   lv_guest_start SITE NAME APPEND   define and start a TCG test guest
#   lv_console SITE NAME      the host path of that guest's console at SITE
#   lv_ram_kib SITE NAME      the guest RAM its QEMU really has
#   lv_last SITE NAME [beat|sweep]         memverify's last "beat N ok" there
#   lv_wait_beat SITE NAME AFTER TIMEOUT [beat|sweep]   wait for a later one
set -euo pipefail

# ip and the daemons live in sbin, which a non-login root shell may lack.
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

lv_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
: "${GUEST_DIR:=$lv_top/cache/guest}"
# QEMU 7.2 under TCG loses writes during migration when RAM is a multiple of
# 256 KiB (docs/ARCHITECTURE.md), and libvirt rounds <memory> up to whole
# MiB: the guest gets this size through <qemu:commandline> instead (see
# lv_guest_xml). A multiple of 8 KiB, as QEMU rounds -m up to one: lib.sh's
# 262148K is really 262152K.
: "${LV_MEM_KIB:=262152}"
# Namespace names carry the pid so that two runs do not meet.
: "${LV_PREFIX:=tsblv$$}"

LV_T=
lv_sites=()	# sites whose namespaces exist, for sites_down

# The EXIT trap may run while a command's 2>FILE is in force (a signal
# handled once that command ends): its messages go to the stderr of the
# start, kept here.
exec {lv_stderr}>&2
lv_log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&"$lv_stderr"; }

site_addr() { case $1 in a) echo 10.77.0.1 ;; b) echo 10.77.0.2 ;; *) return 1 ;; esac; }
site_netns() { echo "$LV_PREFIX-$1"; }
site_uri() { echo "qemu+unix:///system?socket=$LV_T/$1/run/libvirt-sock"; }
# The URI one site's libvirtd uses to reach the other's (name from /etc/hosts).
site_tcp_uri() { echo "qemu+tcp://site-$1/system"; }

site_exec() {
	local s=$1
	shift
	nsenter --net="/run/netns/$(site_netns "$s")" --mount="$LV_T/ns/$s-mnt" \
		--uts="$LV_T/ns/$s-uts" -- "$@"
}

site_virsh() {
	local s=$1
	shift
	virsh -q -c "$(site_uri "$s")" "$@"
}

# site_config SITE: the site's copy of /etc/libvirt and its /etc/hosts.
site_config() {
	local s=$1 d=$LV_T/$1 addr
	addr=$(site_addr "$s")
	mkdir -p "$d"/{run,lib,log/qemu,cache}
	cp -a /etc/libvirt "$d/etc"
	# The packaged default network would want dnsmasq and a bridge.
	rm -f "$d"/etc/qemu/networks/autostart/*
	cat >"$d/etc/libvirtd.conf" <<-EOF
	# tests/libvirt/sites.sh, site $s
	listen_tls = 0
	listen_tcp = 1
	listen_addr = "$addr"
	# No authentication: only the other test site can reach $addr.
	auth_tcp = "none"
	auth_unix_rw = "none"
	auth_unix_ro = "none"
	# libvirt refuses to migrate to a host with its own UUID (and the
	# sites share the machine's SMBIOS UUID).
	host_uuid = "7473626c-7600-4000-8000-0000000000$(printf '%02x' "'$s")"
	log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
	EOF
	cat >"$d/etc/qemu.conf" <<-EOF
	# tests/libvirt/sites.sh, site $s
	user = "root"
	group = "root"
	# Leave the guest kernel and initrd (and their xattrs) as they are.
	dynamic_ownership = 0
	remember_owner = 0
	security_driver = "none"
	# No cgroups: both daemons would make the same /machine/qemu-1-NAME.
	cgroup_controllers = [ ]
	# Incoming migrations listen on, and are announced as, the site's
	# own address (not whatever the hostname resolves to elsewhere).
	migration_address = "$addr"
	migration_host = "$addr"
	EOF
	printf '127.0.0.1 localhost\n%s site-a\n%s site-b\n' \
		"$(site_addr a)" "$(site_addr b)" >"$d/hosts"
}

# site_ns SITE: persistent mount and UTS namespaces (bound to files in
# $LV_T/ns) inside the site's network namespace, with the site's private
# directories mounted.
site_ns() {
	local s=$1 d=$LV_T/$1
	touch "$LV_T/ns/$s-mnt" "$LV_T/ns/$s-uts"
	# shellcheck disable=SC2016 # the script expands its own arguments
	nsenter --net="/run/netns/$(site_netns "$s")" \
		unshare --mount="$LV_T/ns/$s-mnt" --uts="$LV_T/ns/$s-uts" --propagation private \
		bash -euc '
		d=$1
		hostname "site-$2"
		# /run: pid files, locks and sockets of this site only.
		mount -t tmpfs -o mode=755 tmpfs /run
		mkdir /run/libvirt /run/lock
		mount --bind "$d/run" /run/libvirt
		mount --bind "$d/lib" /var/lib/libvirt
		mount --bind "$d/log" /var/log/libvirt
		mount --bind "$d/cache" /var/cache/libvirt
		mount --bind "$d/etc" /etc/libvirt
		mount --bind "$d/hosts" /etc/hosts
		# A sysfs of this network namespace (as ip netns exec does);
		# it also hides the cgroup mounts of the host from libvirt.
		umount -l /sys
		mount -t sysfs sysfs /sys
		' site-ns "$d" "$s"
}

# site_daemons SITE: virtlogd, then libvirtd; waits until libvirtd answers.
site_daemons() {
	local s=$1 i
	site_exec "$s" virtlogd -d -p /run/libvirt/virtlogd.pid
	site_exec "$s" libvirtd -d --listen -p /run/libvirt/libvirtd.pid
	for ((i = 0; i < 300; i++)); do
		virsh -c "$(site_uri "$s")" version >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	lv_log "site $s: libvirtd does not answer on $(site_uri "$s")"
	tail -20 "$LV_T/$s/log/libvirtd.log" 2>/dev/null 1>&"$lv_stderr" || true
	return 1
}

sites_up() {
	local s
	[ "$(id -u)" -eq 0 ] || { lv_log "sites_up needs root"; return 1; }
	LV_T=$(mktemp -d "${TMPDIR:-/tmp}/tsb-lv.XXXXXX")
	sites_trap
	# A namespace can be bound to a file only on a mount that does not
	# propagate (the new namespace would otherwise hold a copy of its own
	# file); / is shared under systemd.
	mkdir "$LV_T/ns"
	mount --bind "$LV_T/ns" "$LV_T/ns"
	mount --make-private "$LV_T/ns"
	for s in a b; do
		ip netns add "$(site_netns "$s")"
		lv_sites+=("$s")
		ip -n "$(site_netns "$s")" link set lo up
	done
	ip link add lv0 netns "$(site_netns a)" type veth peer name lv0 netns "$(site_netns b)"
	for s in a b; do
		ip -n "$(site_netns "$s")" addr add "$(site_addr "$s")/24" dev lv0
		ip -n "$(site_netns "$s")" link set lv0 up
		site_config "$s"
		site_ns "$s"
		site_daemons "$s"
	done
}

# site_restart_libvirtd SITE: a new libvirtd for the site (its QEMUs run
# on; the new one reconnects to them and refreshes their jobs). SIGTERM,
# SIGKILL after 10 s: a libvirtd stuck in a job does not end on SIGTERM.
site_restart_libvirtd() {
	local s=$1 pid i
	pid=$(site_exec "$s" cat /run/libvirt/libvirtd.pid 2>/dev/null) || return 1
	kill "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	site_exec "$s" rm -f /run/libvirt/libvirtd.pid
	site_exec "$s" libvirtd -d --listen -p /run/libvirt/libvirtd.pid
	for ((i = 0; i < 300; i++)); do
		virsh -c "$(site_uri "$s")" version >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	lv_log "site $s: the restarted libvirtd does not answer"
	return 1
}

# site_pids SITE: every process in the site's network namespace: its
# daemons and their QEMUs, nothing else.
site_pids() { ip netns pids "$(site_netns "$1")" 2>/dev/null || true; }

sites_down() {
	local s pids i
	[ -n "$LV_T" ] || return 0
	mapfile -t pids < <(for s in "${lv_sites[@]}"; do site_pids "$s"; done)
	[ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
	# 10 s to exit on SIGTERM (libvirtd stops its QEMUs), then SIGKILL.
	for ((i = 0; i < 100; i++)); do
		mapfile -t pids < <(for s in "${lv_sites[@]}"; do site_pids "$s"; done)
		[ ${#pids[@]} -gt 0 ] || break
		sleep 0.1
	done
	if [ ${#pids[@]} -gt 0 ]; then
		lv_log "killing what ignored SIGTERM: ${pids[*]}"
		kill -9 "${pids[@]}" 2>/dev/null || true
	fi
	for s in "${lv_sites[@]}"; do
		umount "$LV_T/ns/$s-mnt" "$LV_T/ns/$s-uts" 2>/dev/null || true
		ip netns del "$(site_netns "$s")" 2>/dev/null || true
	done
	umount "$LV_T/ns" 2>/dev/null || true
	lv_sites=()
}

# sites_trap: the EXIT trap tears the sites down first, then runs the trap
# that was there (lib.sh's cleanup) with the exit status in $?. set +e: under
# errexit the "(exit N)" that restores $? would end the trap there. $LV_T
# stays after a failure, for its logs.
sites_trap() {
	local prev
	prev=$(trap -p EXIT | sed "s/^trap -- '\(.*\)' EXIT\$/\1/")
	# shellcheck disable=SC2064,SC2154 # expanded now on purpose; lv_rc is the trap's
	trap "lv_rc=\$?; set +e; sites_down; sites_report \$lv_rc; (exit \$lv_rc); ${prev:-exit \$lv_rc}" EXIT
}

sites_report() {
	local rc=$1 f
	[ -n "$LV_T" ] || return 0
	if [ "$rc" -eq 0 ] || [ "$rc" -eq 77 ]; then
		rm -rf "$LV_T"
		return 0
	fi
	lv_log "keeping $LV_T for inspection"
	for f in "$LV_T"/?/log/libvirtd.log "$LV_T"/?/log/qemu/*.log; do
		[ -s "$f" ] && { echo "--- $f (tail)"; tail -5 "$f"; } >&"$lv_stderr"
	done
	return 0
}

# lv_guest_xml NAME APPEND: a TCG guest booting the project's test kernel;
# its console goes to /var/log/libvirt/qemu/NAME.console of whichever site
# runs it (append: a guest back from a trip keeps its earlier lines).
#
# Guest RAM: libvirt 9.0 gives QEMU "-m 256" plus a memory-backend-ram
# "pc.ram" of exactly 256 MiB (-machine memory-backend=pc.ram), and QEMU
# refuses a -m that differs from the backend. So the extra arguments, which
# QEMU reads after libvirt's, repeat all three: -m, a backend of that size
# and -machine memory-backend= naming it (later -m and -machine options
# override earlier ones). libvirt's pc.ram stays, unused: no guest memory,
# no RAM block that migrates. The guest's RAM block is "tsb.ram". The
# migratable XML carries the arguments, so the destination QEMU gets them.
lv_guest_xml() {
	local name=$1 append=$2
	if ((LV_MEM_KIB % 8 != 0 || LV_MEM_KIB % 256 == 0)); then
		lv_log "LV_MEM_KIB=$LV_MEM_KIB: must be a multiple of 8 and not of 256"
		return 1
	fi
	cat <<-EOF
	<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
	  <name>$name</name>
	  <memory unit='KiB'>$((LV_MEM_KIB / 1024 * 1024))</memory>
	  <vcpu>1</vcpu>
	  <os>
	    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
	    <kernel>$GUEST_DIR/vmlinuz</kernel>
	    <initrd>$GUEST_DIR/initrd.img</initrd>
	    <cmdline>console=ttyS0 panic=-1 quiet $append</cmdline>
	  </os>
	  <features><acpi/></features>
	  <on_poweroff>destroy</on_poweroff>
	  <on_reboot>destroy</on_reboot>
	  <on_crash>destroy</on_crash>
	  <devices>
	    <emulator>$(command -v qemu-system-x86_64)</emulator>
	    <serial type='file'>
	      <source path='/var/log/libvirt/qemu/$name.console' append='on'/>
	      <target port='0'/>
	    </serial>
	    <controller type='usb' model='none'/>
	    <memballoon model='none'/>
	  </devices>
	  <qemu:commandline>
	    <qemu:arg value='-m'/>
	    <qemu:arg value='${LV_MEM_KIB}K'/>
	    <qemu:arg value='-object'/>
	    <qemu:arg value='memory-backend-ram,id=tsb.ram,size=${LV_MEM_KIB}K'/>
	    <qemu:arg value='-machine'/>
	    <qemu:arg value='memory-backend=tsb.ram'/>
	  </qemu:commandline>
	</domain>
	EOF
}

# lv_guest_start SITE NAME APPEND: defines (persistent) and starts the guest.
lv_guest_start() {
	local s=$1 name=$2 append=$3
	lv_guest_xml "$name" "$append" >"$LV_T/$name.xml"
	site_virsh "$s" define "$LV_T/$name.xml" >/dev/null
	site_virsh "$s" start "$name" >/dev/null
}

lv_console() { echo "$LV_T/$1/log/qemu/$2.console"; }

# lv_ram_kib SITE NAME: the guest RAM QEMU really has, in KiB.
lv_ram_kib() {
	site_virsh "$1" qemu-monitor-command "$2" '{"execute":"query-memory-size-summary"}' |
		sed -n 's/.*"base-memory": *\([0-9]*\).*/\1/p' | awk '{ print $1 / 1024 }'
}

# lv_check_ram SITE NAME: QEMU at SITE gives NAME the RAM asked for
# (LV_MEM_KIB), not libvirt's whole MiB; says so and returns 1 otherwise.
lv_check_ram() {
	local kib
	kib=$(lv_ram_kib "$1" "$2")
	[ "$kib" = "$LV_MEM_KIB" ] && return 0
	lv_log "guest RAM at site $1 is ${kib:-?} KiB, not $LV_MEM_KIB KiB"
	return 1
}

# lv_last SITE NAME [beat|sweep]: the number of memverify's last "beat N ok"
# (or "sweep N ok", a full verify pass) on the guest's console at SITE; 0
# if none.
lv_last() {
	local n
	n=$(grep -a -o "${3:-beat} [0-9]* ok" "$(lv_console "$1" "$2")" 2>/dev/null |
		tail -1 | awk '{ print $2 }')
	echo "${n:-0}"
}

# lv_wait_beat SITE NAME AFTER TIMEOUT [beat|sweep]: waits for memverify's
# "beat N ok" (or "sweep N ok") with N > AFTER on the guest's console at
# SITE and prints N; fails on a CORRUPT line or after TIMEOUT seconds.
lv_wait_beat() {
	local f n i
	f=$(lv_console "$1" "$2")
	for ((i = 0; i < $4 * 10; i++)); do
		if grep -aq CORRUPT "$f" 2>/dev/null; then
			lv_log "$2 at site $1 found corrupted memory: $(grep -a CORRUPT "$f" | head -1)"
			return 1
		fi
		n=$(lv_last "$1" "$2" "${5:-beat}")
		if [ "$n" -gt "$3" ]; then
			echo "$n"
			return 0
		fi
		sleep 0.1
	done
	lv_log "$2 at site $1: no ${5:-beat} after $3 in $4 s"
	return 1
}
