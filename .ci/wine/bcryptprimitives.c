/*
 * A stand-in for Windows' bcryptprimitives.dll, for running hayedik.exe
 * under Wine in CI only (.ci/windows.sh builds it; it is never shipped).
 *
 * Rust's standard library takes its random bytes from ProcessPrng in
 * bcryptprimitives.dll (Windows 10 and later). Wine 8.0, Debian 12's,
 * has no such DLL, so a Rust program does not even start there. This one
 * exports ProcessPrng on top of RtlGenRandom (advapi32's SystemFunction036),
 * which Wine has and which fills the buffer from the system's CSPRNG.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
