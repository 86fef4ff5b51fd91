/* hello: the smallest SDK program. Proves crt0 (argc/argv from the Linux
 * initial stack), printf through sys_write, and exit through main's return. */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    printf("Hello from hwemu!\n");
    /* argv[0] is the path the runner was given; print only its last part so
     * the output does not depend on where the program lives. */
    const char *slash = strrchr(argv[0], '/');
    printf("argc = %d\n", argc);
    printf("argv[0] = %s\n", slash ? slash + 1 : argv[0]);
    for (int i = 1; i < argc; i++)
        printf("argv[%d] = \"%s\"\n", i, argv[i]);
    return 0;
}
