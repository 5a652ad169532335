using System.CommandLine;
using Hull.Api;

namespace Hull.Cli;

/// <summary>completion: the shell completion script.</summary>
public static partial class CliApp
{
    static Command CompletionCommand()
    {
        var shell = new Argument<string>("shell") { Description = "bash" };
        shell.AcceptOnlyFromAmong("bash");
        var cmd = new Command("completion", "Print a shell completion script: eval \"$(hull completion " +
            "bash)\"") { shell };
        cmd.SetAction(_ =>
        {
            Out.Write("""
                _hull_complete() {
                  local IFS=$'\n'
                  COMPREPLY=( $(hull "[suggest:${COMP_POINT}]" "${COMP_LINE}" 2>/dev/null) )
                }
                complete -o default -F _hull_complete hull

                """);
            return 0;
        });
        return cmd;
    }
}
