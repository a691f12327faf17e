/*
 * A CI helper for .ci/wine-smoke.sh (built with mingw, run under Wine):
 * holds a file open with no sharing, as an editor or a virus scanner may on
 * Windows, so that no other process can open it.
 *
 *   hold.exe PATH READY
 *
 * Opens PATH for reading and writing with share mode 0, creates the file
 * READY to say so, and sleeps until killed. Exit 200: PATH or READY could
 * not be opened.
 */
#include <windows.h>
#include <stdio.h>

int wmain(int argc, wchar_t **argv)
{
    if (argc != 3) {
        fwprintf(stderr, L"usage: hold.exe PATH READY\n");
        return 200;
    }
    HANDLE held = CreateFileW(argv[1], GENERIC_READ | GENERIC_WRITE, 0, NULL,
                              OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, NULL);
    if (held == INVALID_HANDLE_VALUE) {
        fwprintf(stderr, L"hold: cannot open %ls: error %lu\n", argv[1], GetLastError());
        return 200;
    }
    HANDLE ready = CreateFileW(argv[2], GENERIC_WRITE, 0, NULL, CREATE_NEW,
                               FILE_ATTRIBUTE_NORMAL, NULL);
    if (ready == INVALID_HANDLE_VALUE) {
        fwprintf(stderr, L"hold: cannot create %ls: error %lu\n", argv[2], GetLastError());
        return 200;
    }
    CloseHandle(ready);
    Sleep(INFINITE);
    return 0;
}
