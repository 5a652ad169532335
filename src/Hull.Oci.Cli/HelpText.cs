namespace Hull.Oci.Cli;

static class HelpText
{
    public static string For(string verb) => verb switch
    {
        "spec" => "usage: hull-oci spec [--bundle DIR] [--rootless]",
        "create" => "usage: hull-oci create [--bundle DIR] [--pid-file FILE] [--console-socket SOCK] [--no-pivot] " +
            "[--preserve-fds N] ID",
        "start" => "usage: hull-oci start ID",
        "run" => "usage: hull-oci run [--bundle DIR] [--pid-file FILE] [--console-socket SOCK] [--detach|-d] " +
            "[--no-pivot] [--preserve-fds N] ID",
        "state" => "usage: hull-oci state ID",
        "kill" => "usage: hull-oci kill [--all|-a] ID [SIGNAL]   (SIGNAL: a name such as KILL or SIGTERM, or a " +
            "number; default TERM)",
        "delete" => "usage: hull-oci delete [--force|-f] ID",
        "exec" => "usage: hull-oci exec [--process FILE] [--tty|-t] [--detach|-d] [--pid-file FILE] " +
            "[--console-socket SOCK] [--env|-e K=V]... [--cwd DIR] [--user|-u UID[:GID]] [--cap CAP]... " +
            "[--preserve-fds N] ID [COMMAND ARGS...]",
        "list" => "usage: hull-oci list [--format table|json] [--quiet|-q]",
        "ps" => "usage: hull-oci ps [--format table|json] ID",
        "pause" => "usage: hull-oci pause ID",
        "resume" => "usage: hull-oci resume ID",
        "update" => "usage: hull-oci update [--resources FILE|-r FILE] [--memory N] [--cpu-shares N] [--cpu-quota N] " +
            "[--cpu-period N] [--cpuset-cpus LIST] [--cpuset-mems LIST] [--pids-limit N] ID",
        "events" => "usage: hull-oci events [--stats] [--interval 5s] ID",
        "features" => "usage: hull-oci features",
        _ => "",
    };
}
