/* Escape attempts run inside a container by tests/containment.rs. Each prints one line,
 * "<name> contained <why>" or "<name> ESCAPED <what>", and nothing it tries is left behind
 * when it is contained. Built static at test time (gcc -static), so any rootfs can run it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static void report(const char *name, int escaped, const char *what) {
    printf("%s %s %s\n", name, escaped ? "ESCAPED" : "contained", what);
}

/* An attempt that succeeds (returns >= 0) escaped. */
static void attempt(const char *name, long rc) {
    report(name, rc >= 0, rc >= 0 ? "succeeded" : strerror(errno));
}

static void open_for_write(const char *name, const char *path) {
    int fd = open(path, O_WRONLY);
    attempt(name, fd);
    if (fd >= 0) close(fd);
}

int main(int argc, char **argv) {
    if (getpid() != 1 && getenv("MESOS_SANDBOX") == NULL) {
        fprintf(stderr, "probe: runs inside a husk container only\n");
        return 2;
    }
    if (argc > 1 && strcmp(argv[1], "euid") == 0) {
        printf("euid %d\n", (int)geteuid());
        return 0;
    }
    unsigned maj = 0, min = 0;
    int host_pid = 0;
    if (argc > 2) {
        sscanf(argv[1], "%u:%u", &maj, &min);
        host_pid = atoi(argv[2]);
    }
    attempt("mount-tmpfs", mount("none", "/tmp", "tmpfs", 0, NULL));
    attempt("unmount-proc-mask", umount2("/proc/kcore", MNT_DETACH));
    attempt("remount-proc-sys-rw", mount(NULL, "/proc/sys", NULL, MS_REMOUNT | MS_BIND, NULL));
    open_for_write("write-sysrq-trigger", "/proc/sysrq-trigger");
    open_for_write("write-proc-sys", "/proc/sys/vm/swappiness");
    open_for_write("write-sys", "/sys/kernel/mm/ksm/run");
    attempt("mkdir-cgroup", mkdir("/sys/fs/cgroup/memory/husk-escape", 0755));
    /* Without CAP_SYS_MODULE the kernel says EPERM before it looks at the module. */
    long rc = syscall(SYS_finit_module, -1, "", 0);
    report("load-module", rc >= 0 || errno != EPERM, strerror(errno));
    if (maj || min) {
        int made = mknod("/tmp/husk-blk", S_IFBLK | 0600, makedev(maj, min));
        int fd = made == 0 ? open("/tmp/husk-blk", O_RDONLY) : -1;
        attempt("open-raw-block-device", fd);
        if (fd >= 0) close(fd);
        unlink("/tmp/husk-blk");
    }
    if (host_pid > 0) {
        attempt("signal-host-pid", kill(host_pid, 0));
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/root", host_pid);
        struct stat st;
        attempt("see-host-pid", stat(path, &st));
    }
    attempt("unshare-user", unshare(CLONE_NEWUSER));
    attempt("unshare-mount", unshare(CLONE_NEWNS));
    attempt("keyctl", syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, "husk-escape"));
    attempt("add-key", syscall(SYS_add_key, "user", "husk", "x", 1, -3 /* session keyring */));
    return 0;
}
