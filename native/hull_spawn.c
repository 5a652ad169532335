/*
 * hull_spawn.c - the only native code in Hull.
 *
 * A .NET process is multi-threaded, and the child of a clone() must not run
 * managed code (the runtime would wait for GC threads the child does not
 * have). So the child of every spawn runs just this file: raw system calls
 * only, no libc calls that touch TLS (errno), no allocation.
 *
 * Invariants:
 *  - The child shares the parent's memory (CLONE_VM) and runs on its own
 *    mmap'd stack. Everything it reads (struct hull_spawn, argv, envp) lives
 *    in unmanaged memory that the caller keeps alive until hull_spawn_finish
 *    returns.
 *  - All signals are blocked in the calling thread around clone3, so no
 *    runtime signal handler can run on the child's stack. The child resets
 *    every handler to SIG_DFL, then installs the caller's requested mask.
 *  - After clone3 the parent must not change any field the child reads.
 *  - The child reports a failure as one {stage, errno} record on the
 *    close-on-exec error pipe and exits 127; a successful execve closes the
 *    pipe, which is how hull_spawn_finish learns the outcome.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <linux/sched.h>
#include <signal.h>
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <string.h>
#include <stdlib.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <sys/socket.h>

#if !defined(__x86_64__)
#error "hull_spawn.c supports x86_64 only"
#endif

#include "hull_spawn.h"

#define HULL_STACK_SIZE (64 * 1024)

static inline long raw1(long n, long a) {
    long r; __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a) : "rcx", "r11", "memory"); return r;
}
static inline long raw2(long n, long a, long b) {
    long r; __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b) : "rcx", "r11", "memory"); return r;
}
static inline long raw3(long n, long a, long b, long c) {
    long r; __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory"); return r;
}
static inline long raw4(long n, long a, long b, long c, long d) {
    long r; register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory"); return r;
}
static inline long raw5(long n, long a, long b, long c, long d, long e) {
    long r; register long r10 __asm__("r10") = d; register long r8 __asm__("r8") = e;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
    return r;
}

struct k_sigaction { void *handler; unsigned long flags; void *restorer; uint64_t mask; };

static void child_fail(const struct hull_spawn *s, int stage, long err) {
    int32_t rec[2] = { stage, (int32_t)-err };
    raw3(SYS_write, s->error_fd, (long)rec, sizeof rec);
    raw1(SYS_exit_group, 127);
}

static long str_len(const char *p) { long n = 0; while (p[n]) n++; return n; }


struct cap_header { uint32_t version; int pid; };
struct cap_data { uint32_t effective, permitted, inheritable; };

/* Sends fd over the unix socket sock (SCM_RIGHTS, one data byte). Raw syscalls only. */
static long send_fd(int sock, int fd) {
    char byte = 'S';
    struct iovec iov = { &byte, 1 };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr m;
    for (unsigned i = 0; i < sizeof m; i++) ((volatile char *)&m)[i] = 0;
    for (unsigned i = 0; i < sizeof u.buf; i++) ((volatile char *)u.buf)[i] = 0;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = u.buf;
    m.msg_controllen = sizeof u.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    *(int *)CMSG_DATA(c) = fd;
    long r;
    do r = raw3(SYS_sendmsg, sock, (long)&m, MSG_NOSIGNAL); while (r == -EINTR);
    return r < 0 ? r : 0;
}

/* Loads the filter. With SECCOMP_FILTER_FLAG_NEW_LISTENER the kernel returns the notify fd: it goes to the
   parent over listener_sock (the seccomp agent must get it; exec would close it) and is closed here; then the
   child waits for the parent's one-byte go-ahead (sent once the agent has the fd), so nothing of the program
   runs before the agent can answer. EOF instead of the byte: the parent gave up. */
static long load_seccomp(const struct hull_spawn *s, int *stage) {
    long r = raw3(SYS_seccomp, 1 /* SECCOMP_SET_MODE_FILTER */, s->seccomp_flags, (long)s->seccomp_prog);
    if (r < 0) { *stage = ST_SECCOMP; return r; }
    if ((s->seccomp_flags & 8 /* SECCOMP_FILTER_FLAG_NEW_LISTENER */) && r > 0) {
        if (s->listener_sock < 0) { raw1(SYS_close, r); return 0; }
        if (s->listener_close_fd >= 0) raw1(SYS_close, s->listener_close_fd);
        long sent = send_fd(s->listener_sock, (int)r);
        raw1(SYS_close, r);
        if (sent < 0) { *stage = ST_SECCOMP_LISTENER; return sent; }
        char ack = 0;
        do sent = raw3(SYS_read, s->listener_sock, (long)&ack, 1); while (sent == -EINTR);
        if (sent != 1) { *stage = ST_SECCOMP_LISTENER; return sent < 0 ? sent : -ECONNABORTED; }
    }
    return 0;
}

/*
 * Applies the process attributes (in this order: files, umask, personality, seccomp when no_new_privs is off,
 * bounding set, groups/gid/uid keeping capabilities, capabilities, ambient, no_new_privs, seccomp), installs
 * the signal mask and execs. Returns only on failure: a negative errno, with *stage set.
 * Called in the clone child, or on the calling thread by hull_exec (the container init's last step).
 */
static long apply_and_exec(const struct hull_spawn *s, int *stage) {
    long r;
    if (s->apply_process) {
        for (int i = 0; i < s->n_files; i++) {
            long fd = raw3(SYS_open, (long)s->file_path[i], O_WRONLY | O_CLOEXEC, 0);
            if (fd < 0) { *stage = ST_FILES; return fd; }
            r = raw3(SYS_write, fd, (long)s->file_data[i], str_len(s->file_data[i]));
            raw1(SYS_close, fd);
            if (r < 0) { *stage = ST_FILES; return r; }
        }
        if (s->umask >= 0) raw1(SYS_umask, s->umask);
        if (s->personality >= 0) {
            r = raw1(SYS_personality, s->personality);
            if (r < 0) { *stage = ST_PERSONALITY; return r; }
        }
        if (s->seccomp_prog && !s->no_new_privs) {
            /* Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it while we still have it. */
            r = load_seccomp(s, stage);
            if (r < 0) return r;
        }
        for (int c = 0; c <= s->last_cap; c++) {
            if (s->cap_bounding & (1ULL << c)) continue;
            r = raw5(SYS_prctl, PR_CAPBSET_DROP, c, 0, 0, 0);
            if (r < 0 && r != -EINVAL) { *stage = ST_CAPS_BOUNDING; return r; }
        }
        raw5(SYS_prctl, PR_SET_KEEPCAPS, 1, 0, 0, 0);
        if (s->n_groups >= 0) {
            r = raw2(SYS_setgroups, s->n_groups, (long)s->groups);
            if (r < 0 && !(r == -EPERM && s->n_groups == 0)) { *stage = ST_GROUPS; return r; }
        }
        r = raw3(SYS_setresgid, s->gid, s->gid, s->gid);
        if (r < 0) { *stage = ST_GID; return r; }
        r = raw3(SYS_setresuid, s->uid, s->uid, s->uid);
        if (r < 0) { *stage = ST_UID; return r; }
        raw5(SYS_prctl, PR_SET_KEEPCAPS, 0, 0, 0, 0);
        struct cap_header h = { 0x20080522 /* _LINUX_CAPABILITY_VERSION_3 */, 0 };
        struct cap_data d[2] = {
            { (uint32_t)s->cap_effective, (uint32_t)s->cap_permitted, (uint32_t)s->cap_inheritable },
            { (uint32_t)(s->cap_effective >> 32), (uint32_t)(s->cap_permitted >> 32),
              (uint32_t)(s->cap_inheritable >> 32) },
        };
        r = raw2(SYS_capset, (long)&h, (long)d);
        if (r < 0) { *stage = ST_CAPSET; return r; }
        raw5(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        for (int c = 0; c <= s->last_cap; c++) {
            if (!(s->cap_ambient & (1ULL << c))) continue;
            r = raw5(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0);
            if (r < 0) { *stage = ST_AMBIENT; return r; }
        }
        if (s->no_new_privs) {
            r = raw5(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            if (r < 0) { *stage = ST_NNP; return r; }
            if (s->seccomp_prog) {
                r = load_seccomp(s, stage);
                if (r < 0) return r;
            }
        }
    }
    uint64_t mask = s->sigmask;
    r = raw4(SYS_rt_sigprocmask, SIG_SETMASK, (long)&mask, 0, 8);
    if (r < 0) { *stage = ST_SIGNALS; return r; }
    *stage = ST_EXEC;
    if (s->exec_paths) {
        long first = -ENOENT;
        for (int i = 0; s->exec_paths[i]; i++) {
            r = raw3(SYS_execve, (long)s->exec_paths[i], (long)s->argv, (long)s->envp);
            if (r == -EACCES && first == -ENOENT) first = r;  /* like execvp: report EACCES if nothing better */
            if (r != -ENOENT && r != -ENOTDIR && r != -EACCES) return r;
        }
        return first;
    }
    if (s->exec_fd >= 0)
        return raw5(SYS_execveat, s->exec_fd, (long)"", (long)s->argv, (long)s->envp, AT_EMPTY_PATH);
    return raw3(SYS_execve, (long)s->path, (long)s->argv, (long)s->envp);
}

/* The container init's last step, on the calling thread: apply the process attributes and exec.
   Returns only on failure (negative errno, *stage set). Signal handlers are left alone: exec resets them. */
long hull_exec(const struct hull_spawn *s, int32_t *stage) {
    int st = 0;
    long r = apply_and_exec(s, &st);
    *stage = st;
    return r;
}

/* Runs in the child, on the private stack. Never returns. */
static int child_main(struct hull_spawn *s) {
    long r;
    int stage = 0;
    /* 1. Reset every signal handler the runtime installed, while all signals are still blocked. */
    struct k_sigaction dfl = { SIG_DFL, 0, 0, 0 };
    for (int sig = 1; sig <= 64; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        raw4(SYS_rt_sigaction, sig, (long)&dfl, 0, 8);
    }
    /* 2. Wait for the parent (uid/gid maps, cgroup setup). */
    if (s->sync_fd >= 0) {
        if (s->sync_close_fd >= 0) raw1(SYS_close, s->sync_close_fd);
        char b;
        do r = raw3(SYS_read, s->sync_fd, (long)&b, 1); while (r == -EINTR);
        if (r < 0) child_fail(s, ST_SYNC_READ, r);
        if (r == 0) raw1(SYS_exit_group, 126); /* parent gave up: exit quietly */
    }
    /* 3. Join the cgroup (v1): writing "0" moves only this single thread, which avoids the global rwsem. */
    for (int i = 0; i < s->n_join; i++) {
        r = raw3(SYS_write, s->join_fd[i], (long)"0", 1);
        if (r < 0) child_fail(s, ST_CGROUP_JOIN, r);
    }
    /* 4. Join namespaces given by path, in the caller's order (user first when present). */
    for (int i = 0; i < s->n_setns; i++) {
        r = raw2(SYS_setns, s->setns_fd[i], s->setns_type[i]);
        if (r < 0) child_fail(s, ST_SETNS, r);
    }
    /* A new user namespace: become its root before exec, or exec drops the capabilities we hold in it. */
    if (s->become_ns_root) {
        r = raw3(SYS_setresgid, 0, 0, 0);
        if (r < 0) child_fail(s, ST_GID, r);
        r = raw3(SYS_setresuid, 0, 0, 0);
        if (r < 0) child_fail(s, ST_UID, r);
    }
    /* 5. A new time namespace with offsets: takes effect at execve. */
    if (s->timens_offsets) {
        r = raw1(SYS_unshare, 0x00000080 /* CLONE_NEWTIME */);
        if (r < 0) child_fail(s, ST_TIMENS, r);
        long fd = raw3(SYS_open, (long)"/proc/self/timens_offsets", O_WRONLY | O_CLOEXEC, 0);
        if (fd < 0) child_fail(s, ST_TIMENS, fd);
        r = raw3(SYS_write, fd, (long)s->timens_offsets, str_len(s->timens_offsets));
        if (r < 0) child_fail(s, ST_TIMENS, r);
        raw1(SYS_close, fd);
    }
    /* 6. Map fds: first move every source above the highest target, then dup2 into place. */
    int hi = 3;
    for (int i = 0; i < s->n_fds; i++) if (s->fd_dst[i] >= hi) hi = s->fd_dst[i] + 1;
    for (int i = 0; i < s->n_fds; i++) if (s->fd_src[i] >= hi) hi = s->fd_src[i] + 1;
    /* The fds used after the map (the error pipe, the binary to execveat, the listener socket) move above it too:
       one of them may have the number of a target (a mount source fd handed to the container init, say). The
       parent reads none of these fields after clone3, so the child may rewrite them in the shared struct. */
    int32_t *used[] = { &s->error_fd, &s->exec_fd, &s->listener_sock };
    for (unsigned i = 0; i < sizeof used / sizeof used[0]; i++) {
        if (*used[i] < 0 || *used[i] >= hi) continue;
        r = raw3(SYS_fcntl, *used[i], F_DUPFD_CLOEXEC, hi);
        if (r < 0) child_fail(s, ST_FD_MAP, r);
        *used[i] = (int32_t)r;
    }
    int tmp[HULL_MAX_FDS];
    for (int i = 0; i < s->n_fds; i++) {
        r = raw3(SYS_fcntl, s->fd_src[i], F_DUPFD_CLOEXEC, hi);
        if (r < 0) child_fail(s, ST_FD_MAP, r);
        tmp[i] = (int)r;
    }
    for (int i = 0; i < s->n_fds; i++) {
        r = raw3(SYS_dup3, tmp[i], s->fd_dst[i], 0);
        if (r < 0) child_fail(s, ST_FD_MAP, r);
    }
    if (s->setsid) {
        r = raw1(SYS_setsid, 0);
        if (r < 0) child_fail(s, ST_SETSID, r);
    }
    if (s->ctty_fd >= 0) {
        r = raw3(SYS_ioctl, s->ctty_fd, TIOCSCTTY, 0);
        if (r < 0) child_fail(s, ST_CTTY, r);
    }
    if (s->chdir) {
        r = raw1(SYS_chdir, (long)s->chdir);
        if (r < 0) child_fail(s, ST_CHDIR, r);
    }
    r = apply_and_exec(s, &stage);
    child_fail(s, stage, r);
    return 127;
}

/* clone3 onto a new stack; the child calls child_main(s) and exit_groups with its result. */
static long clone3_run(struct clone_args *ca, struct hull_spawn *s) {
    long ret;
    register long r12 __asm__("r12") = (long)child_main;
    register long r13 __asm__("r13") = (long)s;
    __asm__ volatile(
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "xor %%ebp, %%ebp\n\t"
        "mov %%r13, %%rdi\n\t"
        "call *%%r12\n\t"
        "mov %%eax, %%edi\n\t"
        "mov $231, %%eax\n\t"   /* exit_group */
        "syscall\n\t"
        "hlt\n"
        "1:\n\t"
        : "=a"(ret)
        : "a"((long)SYS_clone3), "D"((long)ca), "S"((long)sizeof *ca), "r"(r12), "r"(r13)
        : "rcx", "r11", "memory");
    return ret;
}

/*
 * The container init ("hull-oci init", with _HULL_INIT_FD set) lives in the container's namespaces until it execs
 * the container's process: it turns itself non-dumpable before any other code of it runs (this constructor runs
 * before the .NET runtime starts), so no process in the container can open its /proc/PID/exe or /proc/PID/mem.
 * exec gives the container's process a dumpable mm again. ContainerInit.Main repeats this for builds that load
 * this file as a shared library.
 */
__attribute__((constructor)) static void hull_init_nondumpable(int argc, char **argv, char **envp) {
    if (argc != 2 || !argv || !argv[1] || strcmp(argv[1], "init") != 0 || !envp) return;
    for (char **e = envp; *e; e++)
        if (strncmp(*e, "_HULL_INIT_FD=", 14) == 0) { prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); return; }
}

/* Starts the child. Returns 0 and fills pid/pidfd, or a negative errno. */
int hull_spawn_start(struct hull_spawn *s) {
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) < 0) return -errno;
    s->error_fd = ep[1];
    s->error_read_fd = ep[0];
    s->stack = mmap(NULL, HULL_STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (s->stack == MAP_FAILED) { int e = errno; close(ep[0]); close(ep[1]); s->stack = NULL; return -e; }

    struct clone_args ca;
    memset(&ca, 0, sizeof ca);
    int pidfd = -1;
    ca.flags = s->clone_flags | CLONE_VM | CLONE_PIDFD;
    ca.pidfd = (uint64_t)(uintptr_t)&pidfd;
    ca.exit_signal = s->exit_signal ? s->exit_signal : SIGCHLD;
    ca.stack = (uint64_t)(uintptr_t)s->stack;
    ca.stack_size = HULL_STACK_SIZE;
    if (s->cgroup_fd >= 0) { ca.flags |= CLONE_INTO_CGROUP; ca.cgroup = (uint64_t)s->cgroup_fd; }

    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = 0;
    if (s->parent_pidns_fd >= 0 && setns(s->parent_pidns_fd, CLONE_NEWPID) < 0) err = -errno;
    long pid = err ? err : clone3_run(&ca, s);
    if (s->parent_pidns_fd >= 0 && s->parent_own_pidns_fd >= 0) setns(s->parent_own_pidns_fd, CLONE_NEWPID);
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    /* The child may still be reading *s (shared memory): from here on the parent writes only pid, pidfd, stack. */
    close(ep[1]);
    if (pid < 0) {
        close(ep[0]); s->error_read_fd = -1;
        munmap(s->stack, HULL_STACK_SIZE); s->stack = NULL;
        return (int)pid;
    }
    s->pid = (int32_t)pid;
    s->pidfd = pidfd;
    return 0;
}

/*
 * Waits until the child has exec'd (the error pipe closes) or failed.
 * Returns 0 when the pipe closed without a record (exec succeeded, or the
 * child left quietly because the sync pipe hit EOF; the caller reaps it and
 * sees which), or the child's negative errno with *stage set; a failed child
 * has then been reaped already. After it returns the child no longer runs on
 * the stack or reads the caller's memory, so the stack is unmapped.
 */
int hull_spawn_finish(struct hull_spawn *s, int32_t *stage) {
    int32_t rec[2] = { 0, 0 };
    size_t got = 0;
    while (got < sizeof rec) {
        ssize_t n = read(s->error_read_fd, (char *)rec + got, sizeof rec - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    close(s->error_read_fd);
    s->error_read_fd = -1;
    int ret = 0;
    if (got != 0) {
        *stage = got == sizeof rec ? rec[0] : 0;
        ret = got == sizeof rec ? -rec[1] : -EPIPE;
        /* The child may still be between its write and exit_group, on our stack. */
        siginfo_t si;
        while (waitid(P_PIDFD, (id_t)s->pidfd, &si, WEXITED) < 0 && errno == EINTR) { }
    }
    munmap(s->stack, HULL_STACK_SIZE);
    s->stack = NULL;
    return ret;
}
