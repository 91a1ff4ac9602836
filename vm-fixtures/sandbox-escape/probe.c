/* A hostile "package manager" for tests/sandbox.rs: installed in the guest
 * as dpkg, rpm and sh, it is what vmfinal's sandbox runs for the kernels
 * step and for profiles' run steps. It tries every escape a crafted
 * maintainer script would try and logs, one line each, whether the kernel
 * refused it:
 *   RESULT <name> refused <errno>      the attempt failed as it must
 *   RESULT <name> ALLOWED <detail>     the sandbox let it through
 *   EXPECT <name> ok|FAILED <detail>   something a package manager needs
 *   STATUS <line of /proc/self/status> capabilities, no_new_privs, seccomp
 * to /root/probe.log in the guest and to stdout, then exits 1 so vmfinal
 * reports the failure. Attempts that would change the host if they
 * succeeded are written so that success changes nothing (core_pattern is
 * written with its own value, sysrq and sysfs files are only opened).
 *
 * /etc/probe.conf: "mode=escape" (the above) or "mode=slow" (log start,
 * sleep 3 s, log end to /root/dpkg-calls.log, exit 0: a dpkg that must not
 * be interrupted); "decoy=PID" a host process to try to kill; "canary=PATH"
 * a host file to try to write.
 *
 * Built statically by scripts/make-tree.py (recipe kind `cc`). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <dirent.h>
#include <termios.h>
#include <unistd.h>

static FILE *logf;
static int allowed, attempts;

static void out(const char *fmt, ...) {
    va_list a;
    va_start(a, fmt);
    vprintf(fmt, a);
    va_end(a);
    if (logf) {
        va_start(a, fmt);
        vfprintf(logf, fmt, a);
        va_end(a);
        fflush(logf);
    }
    fflush(stdout);
}

/* r < 0 with errno set: refused; anything else: allowed. */
static void result(const char *name, long r, const char *detail) {
    attempts++;
    if (r < 0) {
        out("RESULT %s refused %s\n", name, strerrorname_np(errno) ? strerrorname_np(errno) : "?");
    } else {
        allowed++;
        out("RESULT %s ALLOWED %s\n", name, detail ? detail : "");
    }
}

/* Refused only with one of the errnos that mean "not permitted". */
static void result_perm(const char *name, long r) {
    if (r < 0 && errno != EPERM && errno != EACCES && errno != EROFS) {
        attempts++;
        allowed++;
        out("RESULT %s ALLOWED got past the permission check (%s)\n", name, strerrorname_np(errno));
        return;
    }
    result(name, r, "");
}

static void expect(const char *name, int ok, const char *detail) {
    out("EXPECT %s %s %s\n", name, ok ? "ok" : "FAILED", detail ? detail : "");
}

static char conf_mode[32] = "escape", conf_canary[512] = "";
static long conf_decoy = 0;

static void read_conf(void) {
    FILE *f = fopen("/etc/probe.conf", "r");
    char line[600];
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!strncmp(line, "mode=", 5)) snprintf(conf_mode, sizeof conf_mode, "%s", line + 5);
        if (!strncmp(line, "canary=", 7)) snprintf(conf_canary, sizeof conf_canary, "%s", line + 7);
        if (!strncmp(line, "decoy=", 6)) conf_decoy = atol(line + 6);
    }
    fclose(f);
}

static void status_lines(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    if (!f) { out("STATUS unreadable\n"); return; }
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "Cap", 3) || !strncmp(line, "NoNewPrivs", 10) || !strncmp(line, "Seccomp:", 8))
            out("STATUS %s", line);
    fclose(f);
}

static void devices(void) {
    /* Writing the guest's own disks under the mounted filesystem. */
    const char *disks[] = {"/dev/vmfinal-disk-a", "/dev/vmfinal-disk-b", "/dev/vmfinal-disk-c"};
    for (int i = 0; i < 3; i++) {
        if (access(disks[i], F_OK) != 0) continue;
        char name[64];
        snprintf(name, sizeof name, "write-disk-%c", 'a' + i);
        /* Write back the bytes that are there: a write that got through
         * would still change nothing. */
        char buf[4096];
        int fd = open(disks[i], O_RDONLY);
        long n = fd >= 0 ? pread(fd, buf, sizeof buf, 0) : -1;
        if (fd >= 0) close(fd);
        if (i == 0) expect("read-disk", n == (long)sizeof buf, "GRUB must be able to read the guest's disks");
        fd = open(disks[i], O_RDWR);
        long w = fd >= 0 && n == (long)sizeof buf ? pwrite(fd, buf, sizeof buf, 0) : -1;
        result_perm(name, w < 0 ? -1 : 0);
        if (fd >= 0) {
            int zero = 0;
            snprintf(name, sizeof name, "blkroset-disk-%c", 'a' + i);
            result_perm(name, ioctl(fd, BLKROSET, &zero));
            close(fd);
        }
    }
    mkdir("/tmp/n", 0755);
    result_perm("mknod-block-sda", mknod("/tmp/n/sda", S_IFBLK | 0600, makedev(8, 0)));
    result_perm("mknod-block-loop0", mknod("/tmp/n/loop0", S_IFBLK | 0600, makedev(7, 0)));
    result_perm("mknod-char-mem", mknod("/tmp/n/mem", S_IFCHR | 0600, makedev(1, 1)));
    result("create-in-dev", open("/dev/probe-file", O_WRONLY | O_CREAT, 0600), "");
    expect("mkfifo", mkfifo("/tmp/n/fifo", 0600) == 0, "");
}

static void mounts(void) {
    mkdir("/tmp/mnt", 0755);
    result_perm("mount-tmpfs", mount("tmpfs", "/tmp/mnt", "tmpfs", 0, NULL));
    result_perm("mount-proc", mount("proc", "/tmp/mnt", "proc", 0, NULL));
    result_perm("mount-disk", mount("/dev/vmfinal-disk-a", "/tmp/mnt", "ext4", MS_RDONLY, NULL));
    result_perm("mount-bind-root", mount("/", "/tmp/mnt", NULL, MS_BIND, NULL));
    result_perm("remount-proc-rw", mount(NULL, "/proc", NULL, MS_REMOUNT, NULL));
    result_perm("umount-proc", umount2("/proc", MNT_DETACH));
    result_perm("fsopen", syscall(SYS_fsopen, "tmpfs", 0));
    result_perm("open-tree", syscall(SYS_open_tree, AT_FDCWD, "/", 1 /* OPEN_TREE_CLONE */));
    result_perm("pivot-root", syscall(SYS_pivot_root, "/tmp", "/tmp/mnt"));
    result_perm("swapon", swapon("/dev/vmfinal-disk-b", 0));
}

static void write_value(const char *name, const char *path, int same_value) {
    char old[512] = "";
    struct stat st;
    if (stat(path, &st) != 0) return; /* not on this kernel */
    int fd = open(path, O_RDONLY);
    long n = fd >= 0 ? read(fd, old, sizeof old - 1) : 0;
    if (fd >= 0) close(fd);
    if (n < 0) n = 0;
    old[n] = 0;
    fd = open(path, O_WRONLY);
    if (fd < 0) { result_perm(name, -1); return; }
    if (!same_value) { close(fd); result(name, 0, "opened for writing"); return; }
    long w = write(fd, old, strlen(old));
    close(fd);
    result_perm(name, w < 0 ? -1 : 0);
}

static void proc_sys(void) {
    write_value("write-core-pattern", "/proc/sys/kernel/core_pattern", 1);
    write_value("write-hostname", "/proc/sys/kernel/hostname", 1);
    write_value("write-modprobe-path", "/proc/sys/kernel/modprobe", 1);
    write_value("open-sysrq-trigger", "/proc/sysrq-trigger", 0);
    write_value("open-sys-uevent-helper", "/sys/kernel/uevent_helper", 0);
    write_value("open-sys-thp", "/sys/kernel/mm/transparent_hugepage/enabled", 0);
    result_perm("sethostname", sethostname("pwned", 5));
    result_perm("setdomainname", setdomainname("pwned", 5));
}

static void modules(void) {
    char img[16] = {0};
    result_perm("init-module", syscall(SYS_init_module, img, sizeof img, ""));
    int fd = open("/etc/probe.conf", O_RDONLY);
    result_perm("finit-module", syscall(SYS_finit_module, fd, "", 0));
    if (fd >= 0) close(fd);
    result_perm("delete-module", syscall(SYS_delete_module, "vmfinal_no_such_module", O_NONBLOCK));
    result_perm("kexec-load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    result_perm("reboot", syscall(SYS_reboot, 0, 0, 0, NULL));
    result_perm("bpf", syscall(SYS_bpf, 0, NULL, 0));
    result_perm("keyctl", syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* session */, 0));
    result_perm("perf-event-open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
    unsigned char params[120] = {0};
    long u = syscall(SYS_io_uring_setup, 1, params);
    result_perm("io-uring-setup", u);
    if (u >= 0) close((int)u);
#ifdef __x86_64__
    result_perm("iopl", syscall(SYS_iopl, 3));
#endif
}

static void processes(void) {
    pid_t pp = getppid();
    result_perm("ptrace-attach-parent", ptrace(PTRACE_ATTACH, pp, NULL, NULL));
    if (conf_decoy > 0) {
        long r = ptrace(PTRACE_ATTACH, (pid_t)conf_decoy, NULL, NULL);
        result("ptrace-attach-decoy", r, "");
    }
    char buf[16];
    struct iovec l = {buf, sizeof buf}, r = {(void *)0x400000, sizeof buf};
    result_perm("process-vm-readv-parent", process_vm_readv(pp, &l, 1, &r, 1, 0));
    if (conf_decoy > 0) result("kill-decoy", kill((pid_t)conf_decoy, SIGKILL), "");
    /* Every process this one can see but itself and the namespace's init. */
    DIR *d = opendir("/proc");
    char seen[256] = "";
    int foreign = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        long pid = atol(e->d_name);
        if (pid <= 1 || pid == getpid()) continue;
        foreign++;
        size_t len = strlen(seen);
        snprintf(seen + len, sizeof seen - len, " %ld", pid);
    }
    if (d) closedir(d);
    result("see-other-processes", foreign ? 0 : -1, seen);
    /* Signals that, outside a PID namespace, would reach the host (only
     * tried when no foreign process is visible, i.e. inside one). */
    errno = EPERM;
    result("process-group-outside", getpgrp() == 0 || getsid(0) == 0 ? 0 : -1,
           "shares a process group or session with processes outside the sandbox");
    /* A parent outside the PID namespace (ppid 0): kill(0) or kill(-1)
     * could reach the host; report it instead of trying. */
    errno = EPERM;
    result("parent-outside-pid-namespace", pp == 0 ? 0 : -1, "ppid is 0");
    if (!foreign && pp != 0) {
        /* kill(-1) reaches every process it may signal but itself and init. */
        result("kill-all", kill(-1, SIGKILL), "signalled something");
        /* The namespace's init ignores signals from inside it. */
        kill(pp, SIGKILL);
        usleep(100000);
        errno = ESRCH;
        result("kill-parent", getppid() != pp ? 0 : -1, "the sandbox's init died");
    }
    int fd = open("/proc/1/root/etc/hostname", O_RDONLY);
    result("open-proc-1-root", fd, "");
    if (fd >= 0) close(fd);
    char link[256];
    result("readlink-proc-1-cwd", readlink("/proc/1/cwd", link, sizeof link), "");
    fd = open("/proc/1/ns/mnt", O_RDONLY);
    result("open-proc-1-ns", fd, "");
    if (fd >= 0) close(fd);
    fd = open("/proc/self/ns/mnt", O_RDONLY);
    result_perm("setns", syscall(SYS_setns, fd, 0));
    if (fd >= 0) close(fd);
    result_perm("unshare-user", unshare(CLONE_NEWUSER));
    result_perm("unshare-mount", unshare(CLONE_NEWNS));
    long c = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (c == 0) _exit(0);
    if (c > 0) waitpid((pid_t)c, NULL, 0);
    result_perm("clone-newuser", c);
    result_perm("tiocsti", ioctl(1, TIOCSTI, "x"));
    fd = open("/dev/tty", O_RDWR);
    result("open-dev-tty", fd, "a controlling terminal");
    if (fd >= 0) close(fd);
}

static void chroot_escapes(void) {
    struct stat root, here;
    stat("/", &root);
    mkdir("/tmp/jail", 0755);
    result_perm("chroot", chroot("/tmp/jail"));
    chdir("/");
    for (int i = 0; i < 64; i++) chdir("..");
    stat(".", &here);
    errno = EPERM;
    result("dotdot-out-of-root", here.st_ino == root.st_ino && here.st_dev == root.st_dev ? -1 : 0,
           "cwd left the guest root");
    /* Descriptors inherited from vmfinal would lead out (fchdir). */
    char fds[128] = "";
    int open_fds = 0;
    for (int fd = 3; fd < 1024; fd++) {
        if (fcntl(fd, F_GETFD) < 0 || (logf && fd == fileno(logf))) continue;
        open_fds++;
        size_t len = strlen(fds);
        snprintf(fds + len, sizeof fds - len, " %d", fd);
    }
    errno = EBADF;
    result("inherited-fds", open_fds ? 0 : -1, fds);
    struct {
        unsigned int bytes;
        int type;
        unsigned char f[8];
    } h = {8, 1 /* FILEID_INO32_GEN */, {2, 0, 0, 0, 0, 0, 0, 0}};
    int mount_id;
    result_perm("name-to-handle-at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/", &h, &mount_id, 0));
    int rootfd = open("/", O_RDONLY | O_DIRECTORY);
    result_perm("open-by-handle-at", syscall(SYS_open_by_handle_at, rootfd, &h, O_RDONLY));
    if (rootfd >= 0) close(rootfd);
}

static void host_files(void) {
    if (!conf_canary[0]) return;
    char p[700];
    int fd = open(conf_canary, O_WRONLY | O_TRUNC);
    result("write-canary", fd >= 0 && write(fd, "pwned", 5) == 5 ? 0 : -1, conf_canary);
    if (fd >= 0) close(fd);
    snprintf(p, sizeof p, "/proc/1/root%s", conf_canary);
    fd = open(p, O_WRONLY | O_TRUNC);
    result("write-canary-via-proc-1-root", fd >= 0 ? 0 : -1, p);
    if (fd >= 0) close(fd);
    snprintf(p, sizeof p, "../../../../../../..%s", conf_canary);
    chdir("/tmp");
    fd = open(p, O_WRONLY | O_TRUNC);
    result("write-canary-via-dotdot", fd >= 0 ? 0 : -1, p);
    if (fd >= 0) close(fd);
}

static void needs(void) {
    int fd = open("/tmp/owned", O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) close(fd);
    expect("chown", chown("/tmp/owned", 1000, 1000) == 0, "CAP_CHOWN kept");
    expect("chmod-other-owner", chmod("/tmp/owned", 04755) == 0, "CAP_FOWNER kept");
    pid_t c = fork();
    if (c == 0) _exit(setgid(1000) == 0 && setuid(1000) == 0 ? 0 : 1);
    int st = 1;
    if (c > 0) waitpid(c, &st, 0);
    expect("setuid", c > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "CAP_SETUID/SETGID kept");
    expect("write-guest-file", (fd = open("/root/probe-wrote", O_WRONLY | O_CREAT, 0600)) >= 0, "");
    if (fd >= 0) close(fd);
}

static int slow(void) {
    FILE *f = fopen("/root/dpkg-calls.log", "a");
    if (!f) return 2;
    fprintf(f, "start\n");
    fflush(f);
    /* The work happens in a child, as in a maintainer script: a signal to
     * the process group would reach it. */
    pid_t c = fork();
    if (c == 0) {
        sleep(3);
        _exit(0);
    }
    int st = 0;
    if (c < 0 || waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(f, "killed\n");
        fclose(f);
        return 1;
    }
    fprintf(f, "end\n");
    fclose(f);
    return 0;
}

int main(int argc, char **argv) {
    read_conf();
    if (!strcmp(conf_mode, "slow")) return slow();
    /* As rpm asked for kernels: an answer no rpm database holds, so a plan
     * that used it shows that rpm ran. */
    const char *base = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    if (!strcmp(base, "rpm") && argc > 1 && !strncmp(argv[1], "-q", 2)) {
        printf("kernel-core\t0:99-1\t99.0-1.CANARY.x86_64\n");
        printf("kernel-core\t0:98-1\t98.0-1.CANARY.x86_64\n");
        return 0;
    }
    logf = fopen("/root/probe.log", "a");
    out("INVOKED %s\n", argv[0]);
    status_lines();
    devices();
    mounts();
    proc_sys();
    modules();
    processes();
    chroot_escapes();
    host_files();
    needs();
    out("probe: %d attempts, %d allowed\n", attempts, allowed);
    return 1;
}
