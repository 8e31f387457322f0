' Exhibition VM Controller: heartbeat for Windows guests with nothing installed
' (Windows XP and later: VBScript and MSXML2.XMLHTTP come with the system).
'
' Sends GET /api/v1/heartbeat?seq=N&boot=ID every second, for as long as it
' runs. Put it (or a shortcut to it) in the Startup folder; see README.md.
'
'   wscript heartbeat.vbs [URL [INTERVAL_SECONDS [TOKEN [PROGRESS_FILE]]]]
'
' Progress (optional): with ProgressFile set, each heartbeat also carries
' &progress=VALUE, the first line of that file (read as text in the system's
' code page, cut to 128 characters, sent as UTF-8, percent-encoded), for an
' artwork or a launcher that writes its state there (a frame or scene
' counter). No file, an unreadable one or an empty first line: the heartbeat
' goes without progress. The controller can revert the VM when the value has
' not changed for a while.
'
' The settings below are used when no arguments are given. A controller that
' is down, refusing or silent is logged and retried: the script never stops
' on its own. Each request is bounded by TimeoutMs (asynchronous request,
' aborted when late), so a lost connection never blocks the loop.
Option Explicit

' --- settings ----------------------------------------------------------------
Dim Url, IntervalMs, TimeoutMs, Token, LogFile, ProgressFile
Url = "http://192.168.122.1:8000"   ' the controller as this guest reaches it
IntervalMs = 1000                    ' between heartbeats
TimeoutMs = 5000                     ' bound on each request
Token = ""                           ' the controller's guest token, once it has one
LogFile = "C:\exhibition\heartbeat.log"  ' start, failures, recoveries; "" for none
ProgressFile = ""                    ' e.g. "C:\exhibition\progress.txt"; "" for no progress
' -------------------------------------------------------------------------------

If WScript.Arguments.Count >= 1 Then Url = WScript.Arguments(0)
If WScript.Arguments.Count >= 2 Then
    If IsNumeric(WScript.Arguments(1)) Then IntervalMs = CLng(WScript.Arguments(1)) * 1000
End If
If WScript.Arguments.Count >= 3 Then Token = WScript.Arguments(2)
If WScript.Arguments.Count >= 4 Then ProgressFile = WScript.Arguments(3)
If IntervalMs < 100 Then IntervalMs = 1000
Do While Right(Url, 1) = "/"
    Url = Left(Url, Len(Url) - 1)
Loop

Const PROGRESS_MAX_LENGTH = 128   ' characters: the controller's limit on a progress value
Dim Boot, Seq, Failing, Failures, Started, Why, Elapsed, ProgressMissing
Randomize
Boot = Right("0000000" & Hex(Int(Rnd * 2147483647)), 8)
Seq = 0
Failing = False
Failures = 0
ProgressMissing = False
If ProgressFile <> "" Then
    WriteLog "started: heartbeats to " & Url & " every " & IntervalMs & " ms (boot=" & Boot & "); progress from " & ProgressFile
Else
    WriteLog "started: heartbeats to " & Url & " every " & IntervalMs & " ms (boot=" & Boot & ")"
End If

Do
    Started = Timer
    Seq = Seq + 1
    Why = Heartbeat(Url & "/api/v1/heartbeat?seq=" & Seq & "&boot=" & Boot & ProgressQuery())
    If Why = "" Then
        If Failing Then WriteLog "seq=" & Seq & " ok: the controller answers again after " & Failures & " failed heartbeat(s)"
        Failing = False
        Failures = 0
    Else
        Failures = Failures + 1
        If Not Failing Then WriteLog "seq=" & Seq & " FAIL: " & Why
        Failing = True
    End If
    Elapsed = MillisecondsSince(Started)
    If Elapsed < IntervalMs Then WScript.Sleep IntervalMs - Elapsed
Loop

' One heartbeat. Returns "" on success, else what went wrong; never raises.
Function Heartbeat(target)
    Dim http, waited, status
    On Error Resume Next
    Set http = CreateObject("MSXML2.XMLHTTP")
    If Err.Number <> 0 Then
        Heartbeat = "MSXML2.XMLHTTP is not available: " & Err.Description
        Err.Clear
        Exit Function
    End If
    http.open "GET", target, True
    ' XMLHTTP goes through WinInet's cache: make sure the request reaches the controller.
    http.setRequestHeader "If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT"
    http.setRequestHeader "Cache-Control", "no-cache"
    If Token <> "" Then http.setRequestHeader "Authorization", "Bearer " & Token
    http.send
    If Err.Number <> 0 Then
        Heartbeat = "cannot send: " & Err.Description
        Err.Clear
        Exit Function
    End If
    waited = 0
    Do While http.readyState <> 4 And waited < TimeoutMs
        WScript.Sleep 50
        waited = waited + 50
    Loop
    If http.readyState <> 4 Then
        http.abort
        Heartbeat = "no answer within " & TimeoutMs & " ms"
    Else
        status = http.status   ' WinInet's own errors show here too, e.g. 12029: cannot connect
        If Err.Number <> 0 Then
            Heartbeat = "request failed: " & Err.Description
        ElseIf status < 200 Or status > 299 Then
            Heartbeat = "HTTP " & status & " " & http.statusText
        Else
            Heartbeat = ""
        End If
    End If
    Err.Clear
    Set http = Nothing
End Function

' "&progress=VALUE" from the first line of ProgressFile, or "" (no file set,
' none there, unreadable, or an empty first line); logs when that changes.
Function ProgressQuery()
    Dim fso, file, line
    ProgressQuery = ""
    If ProgressFile = "" Then Exit Function
    line = ""
    On Error Resume Next
    Set fso = CreateObject("Scripting.FileSystemObject")
    If fso.FileExists(ProgressFile) Then
        Set file = fso.OpenTextFile(ProgressFile, 1)
        If Err.Number = 0 Then
            If Not file.AtEndOfStream Then line = file.ReadLine
            file.Close
        End If
    End If
    If Err.Number <> 0 Then line = ""
    Err.Clear
    On Error GoTo 0
    If Right(line, 1) = vbCr Then line = Left(line, Len(line) - 1)
    line = Left(line, PROGRESS_MAX_LENGTH)
    If line = "" Then
        If Not ProgressMissing Then WriteLog "progress: no value in " & ProgressFile & ": heartbeats go without progress"
        ProgressMissing = True
    Else
        If ProgressMissing Then WriteLog "progress: " & ProgressFile & " has a value again"
        ProgressMissing = False
        ProgressQuery = "&progress=" & UrlEncode(line)
    End If
End Function

' text as UTF-8, every byte but A-Z a-z 0-9 - . _ ~ percent-encoded.
Function UrlEncode(text)
    Dim i, c, code, low, out
    out = ""
    i = 1
    Do While i <= Len(text)
        c = Mid(text, i, 1)
        code = AscW(c)
        If code < 0 Then code = code + 65536   ' AscW is negative from U+8000 on
        If (code >= 48 And code <= 57) Or (code >= 65 And code <= 90) Or (code >= 97 And code <= 122) _
                Or c = "-" Or c = "." Or c = "_" Or c = "~" Then
            out = out & c
        ElseIf code < 128 Then
            out = out & PercentByte(code)
        ElseIf code < 2048 Then
            out = out & PercentByte(192 + code \ 64) & PercentByte(128 + (code And 63))
        ElseIf code >= 55296 And code <= 57343 Then
            ' UTF-16 surrogates: a high one and a low one make one character beyond U+FFFF
            low = 0
            If code <= 56319 And i < Len(text) Then low = AscW(Mid(text, i + 1, 1))
            If low < 0 Then low = low + 65536
            If low >= 56320 And low <= 57343 Then
                code = 65536 + (code - 55296) * 1024 + (low - 56320)
                out = out & PercentByte(240 + code \ 262144) & PercentByte(128 + ((code \ 4096) And 63)) _
                    & PercentByte(128 + ((code \ 64) And 63)) & PercentByte(128 + (code And 63))
                i = i + 1
            Else
                out = out & "%3F"   ' a lone surrogate is no character: "?"
            End If
        Else
            out = out & PercentByte(224 + code \ 4096) & PercentByte(128 + ((code \ 64) And 63)) _
                & PercentByte(128 + (code And 63))
        End If
        i = i + 1
    Loop
    UrlEncode = out
End Function

Function PercentByte(value)
    PercentByte = "%" & Right("0" & Hex(value), 2)
End Function

Function MillisecondsSince(since)
    Dim seconds
    seconds = Timer - since
    If seconds < 0 Then seconds = seconds + 86400   ' Timer starts again at midnight
    MillisecondsSince = CLng(seconds * 1000)
End Function

' Appends a line to LogFile (rotated to .old at 1 MiB); under cscript also prints it.
Sub WriteLog(text)
    Dim fso, file, line
    On Error Resume Next
    line = Year(Now) & "-" & Right("0" & Month(Now), 2) & "-" & Right("0" & Day(Now), 2) & " " & _
           Right("0" & Hour(Now), 2) & ":" & Right("0" & Minute(Now), 2) & ":" & Right("0" & Second(Now), 2) & _
           " heartbeat: " & text
    If InStr(LCase(WScript.FullName), "cscript") > 0 Then WScript.Echo line
    If LogFile = "" Then Exit Sub
    Set fso = CreateObject("Scripting.FileSystemObject")
    If fso.FileExists(LogFile) Then
        If fso.GetFile(LogFile).Size > 1048576 Then fso.CopyFile LogFile, LogFile & ".old", True : fso.DeleteFile LogFile
    End If
    Set file = fso.OpenTextFile(LogFile, 8, True)
    file.WriteLine line
    file.Close
    Err.Clear
End Sub
