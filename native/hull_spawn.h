/*
 * hull_spawn.h - the request that hull_spawn.c's entry points read and fill.
 *
 * Mirrored field by field by Spawner.NativeSpawn (src/Hull.Linux/Process/Spawner.cs); the test
 * NativeSpawnLayoutTests compiles this header and checks every field's offset and size against it.
 */
#ifndef HULL_SPAWN_H
#define HULL_SPAWN_H

#include <stdint.h>

#define HULL_MAX_FDS 64
#define HULL_MAX_NS 16

/* Stages reported with an errno when the child fails: SpawnStage in src/Hull.Linux/Process/Spawner.cs
   (NativeSpawnLayoutTests checks that both list the same values). */
enum {
    ST_SYNC_READ = 1,
    ST_SETNS = 2,
    ST_CGROUP_JOIN = 3,
    ST_TIMENS = 4,
    ST_FD_MAP = 5,
    ST_SIGNALS = 6,
    ST_EXEC = 7,
    ST_SETSID = 8,
    ST_CHDIR = 9,
    ST_CTTY = 10,
    ST_FILES = 11,
    ST_PERSONALITY = 12,
    ST_CAPS_BOUNDING = 13,
    ST_GROUPS = 14,
    ST_GID = 15,
    ST_UID = 16,
    ST_CAPSET = 17,
    ST_AMBIENT = 18,
    ST_NNP = 19,
    ST_SECCOMP = 20,
    ST_SECCOMP_LISTENER = 21,
};

struct hull_spawn {
    uint64_t clone_flags;         /* CLONE_NEW* flags for clone3 */
    int32_t cgroup_fd;            /* cgroup2 directory for CLONE_INTO_CGROUP, or -1 */
    int32_t sync_fd;              /* child waits for one byte (or EOF) here first, or -1 */
    int32_t sync_close_fd;        /* the parent's end of the sync pipe: the child closes its copy first */
    int32_t error_fd;             /* write end of the close-on-exec error pipe */
    int32_t exec_fd;              /* execveat(exec_fd, "", AT_EMPTY_PATH) if >= 0 */
    const char *path;             /* else execve(path) */
    char *const *argv;
    char *const *envp;
    int32_t parent_pidns_fd;      /* joined by the calling thread around clone3, or -1 */
    int32_t parent_own_pidns_fd;  /* the caller's pid_for_children, restored after clone3 */
    int32_t n_setns;              /* namespaces the child joins, in order */
    int32_t setns_fd[HULL_MAX_NS];
    int32_t setns_type[HULL_MAX_NS];
    int32_t n_join;               /* files the child writes "0" to (cgroup v1 "tasks") */
    int32_t join_fd[HULL_MAX_NS];
    const char *timens_offsets;   /* if set: unshare(CLONE_NEWTIME), write to /proc/self/timens_offsets */
    int32_t n_fds;                /* fd map: fd_src[i] becomes fd_dst[i] in the child */
    int32_t fd_src[HULL_MAX_FDS];
    int32_t fd_dst[HULL_MAX_FDS];
    int32_t setsid;               /* call setsid() in the child */
    int32_t ctty_fd;              /* after setsid: make this fd (a child-side number) the controlling tty, or -1 */
    int32_t exit_signal;          /* normally SIGCHLD */
    const char *chdir;            /* chdir in the child before exec, or NULL */
    uint64_t sigmask;             /* mask installed in the child before exec */
    /* Process attributes applied last, on the exec'ing thread (exec into a container, and the container init). */
    int32_t apply_process;        /* 0: skip everything down to exec_paths */
    int32_t umask;                /* -1: leave as is */
    int64_t personality;          /* -1: leave as is */
    int32_t n_files;              /* files written first (e.g. /proc/thread-self/attr/exec) */
    const char *file_path[4];
    const char *file_data[4];
    uint64_t cap_bounding, cap_effective, cap_permitted, cap_inheritable, cap_ambient;
    int32_t last_cap;
    int32_t uid, gid;
    int32_t n_groups;             /* -1: do not call setgroups */
    uint32_t groups[64];
    int32_t no_new_privs;
    const void *seccomp_prog;     /* struct sock_fprog *, or NULL */
    uint32_t seccomp_flags;
    const char *const *exec_paths; /* NULL-terminated candidates tried in order (PATH search); else exec_fd/path */
    int32_t become_ns_root;       /* after the namespaces: setresgid/setresuid(0) (a new user namespace's root) */
    /* filled by hull_spawn_start */
    int32_t pid;
    int32_t pidfd;
    int32_t error_read_fd;
    void *stack;
    /* A unix socket: a filter loaded with SECCOMP_FILTER_FLAG_NEW_LISTENER hands its notify fd to the parent
       through it (SCM_RIGHTS), before exec closes it, and waits for a byte back; -1 otherwise. */
    int32_t listener_sock;
    int32_t listener_close_fd;    /* the parent's end of that socket pair: the child closes its copy first */
};

int hull_spawn_start(struct hull_spawn *s);
int hull_spawn_finish(struct hull_spawn *s, int32_t *stage);
long hull_exec(const struct hull_spawn *s, int32_t *stage);

#endif
