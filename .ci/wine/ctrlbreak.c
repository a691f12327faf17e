/*
 * A CI helper for .ci/wine-smoke.sh (built with mingw, run under Wine):
 * sends Ctrl-Break, the Windows counterpart of SIGTERM, to a program.
 *
 *   ctrlbreak.exe TRIGGER PROGRAM [ARGS...]
 *
 * Starts PROGRAM in a new process group (sharing this console and the
 * standard handles), waits until the file TRIGGER exists (60 s at most),
 * sends CTRL_BREAK_EVENT to that group, waits for PROGRAM (60 s at most) and
 * exits with PROGRAM's exit status. Exit 200: the program could not be
 * started or the event could not be sent (then PROGRAM is terminated);
 * 201: it did not end in time.
 *
 * Debian's Wine 8.0 cannot send the event to a program started from a Unix
 * shell (no console: GenerateConsoleCtrlEvent fails with error 12, and
 * AllocConsole does not help): the smoke test reports that part as skipped.
 */
#include <windows.h>
#include <stdio.h>
#include <wchar.h>

int wmain(int argc, wchar_t **argv)
{
    if (argc < 3) {
        fwprintf(stderr, L"usage: ctrlbreak.exe TRIGGER PROGRAM [ARGS...]\n");
        return 200;
    }
    /* The command line after TRIGGER, as given (each argument quoted). */
    static wchar_t line[32768];
    size_t used = 0;
    for (int i = 2; i < argc; i++) {
        int n = swprintf(line + used, sizeof line / sizeof *line - used,
                         L"%ls\"%ls\"", i > 2 ? L" " : L"", argv[i]);
        if (n < 0) {
            fwprintf(stderr, L"ctrlbreak: command line too long\n");
            return 200;
        }
        used += (size_t)n;
    }
    /* The program shares this console and these standard handles. */
    STARTUPINFOW si = { .cb = sizeof si };
    PROCESS_INFORMATION pi;
    if (!CreateProcessW(NULL, line, NULL, NULL, TRUE, CREATE_NEW_PROCESS_GROUP,
                        NULL, NULL, &si, &pi)) {
        fwprintf(stderr, L"ctrlbreak: cannot start %ls: error %lu\n", argv[2], GetLastError());
        return 200;
    }
    for (int waited = 0; GetFileAttributesW(argv[1]) == INVALID_FILE_ATTRIBUTES; waited += 50) {
        if (waited >= 60000 || WaitForSingleObject(pi.hProcess, 50) == WAIT_OBJECT_0)
            break;
    }
    if (!GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pi.dwProcessId)) {
        fwprintf(stderr, L"ctrlbreak: GenerateConsoleCtrlEvent failed: error %lu\n", GetLastError());
        TerminateProcess(pi.hProcess, 200);
        return 200;
    }
    if (WaitForSingleObject(pi.hProcess, 60000) != WAIT_OBJECT_0) {
        TerminateProcess(pi.hProcess, 201);
        return 201;
    }
    DWORD status = 200;
    GetExitCodeProcess(pi.hProcess, &status);
    return (int)status;
}
